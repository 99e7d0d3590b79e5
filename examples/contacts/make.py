"""Writes the bundled example task: one sentence about a person in, one JSON object out.

    python examples/contacts/make.py     # rewrites train.jsonl and test.jsonl (deterministic)

The user message carries no instruction at all: the fine-tune bakes the format in, so the
prompt shrinks to the input itself.
"""

import json
import random
from pathlib import Path

FIRST = ["Maria", "John", "Aiko", "Lars", "Fatima", "Pedro", "Chloe", "Ravi", "Olga", "Samuel", "Ines", "Tomas",
         "Grace", "Yusuf", "Hannah", "Mateo", "Leila", "Oscar", "Nina", "Kwame", "Sofia", "Ethan", "Mei", "Diego"]
LAST = ["Lopez", "Smith", "Tanaka", "Berg", "Haddad", "Silva", "Martin", "Patel", "Ivanova", "Okafor", "Costa",
        "Novak", "Kim", "Demir", "Weber", "Rossi", "Nguyen", "Larsen", "Moreau", "Mensah", "Garcia", "Chen"]
CITIES = ["Madrid", "Boston", "Osaka", "Oslo", "Beirut", "Lisbon", "Lyon", "Pune", "Kyiv", "Lagos", "Porto",
          "Prague", "Seoul", "Izmir", "Berlin", "Turin", "Hanoi", "Bergen", "Nantes", "Accra", "Denver", "Quito"]
JOBS = ["nurse", "teacher", "architect", "plumber", "chef", "pilot", "lawyer", "designer", "farmer",
        "engineer", "baker", "dentist", "journalist", "electrician", "librarian", "pharmacist"]
TEMPLATES = [
    "{name} is a {age}-year-old {job} from {city}.",
    "Meet {name}, {age}, who works as a {job} in {city}.",
    "{name} ({age}) lives in {city} and is a {job}.",
    "Our new {job}, {name}, is {age} and based in {city}.",
    "{name}, a {job} in {city}, turned {age} last month.",
    "After years abroad, {name} moved back to {city} to work as a {job}. Age: {age}.",
    "Contact: {name}. Occupation: {job}. Home town: {city}. {age} years old.",
    "I met {name} in {city} yesterday; {age}, works as a {job}.",
]


def example(rng: random.Random) -> dict:
    person = {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "age": rng.randint(19, 78),
              "city": rng.choice(CITIES), "job": rng.choice(JOBS)}
    sentence = rng.choice(TEMPLATES).format(**person)
    return {"messages": [{"role": "user", "content": sentence},
                         {"role": "assistant", "content": json.dumps(person)}]}


def main() -> None:
    rng = random.Random(1234)
    rows = [example(rng) for _ in range(400)]
    here = Path(__file__).parent
    for name, part in (("train.jsonl", rows[:340]), ("test.jsonl", rows[340:])):
        with open(here / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


if __name__ == "__main__":
    main()
