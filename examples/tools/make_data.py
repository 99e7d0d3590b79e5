"""Writes train.jsonl and val.jsonl beside this file: a small function-calling set (weather and a
calculator), deterministic. Run: python examples/tools/make_data.py

Each row carries the two tools. Most rows are a question, the assistant's call, the tool's result and
the final answer (both assistant turns are trained); some ask for two cities at once (two calls in one
turn); some need no tool. Validation rows are new questions (other cities, numbers and pairs).
"""

import json
import random
from pathlib import Path

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "calculate", "description": "Arithmetic on two numbers",
        "parameters": {"type": "object", "properties": {
            "operation": {"type": "string", "enum": ["add", "subtract", "multiply", "divide"]},
            "a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["operation", "a", "b"], "additionalProperties": False}}},
]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Cairo", "Lima", "Sydney", "Toronto",
          "Dublin", "Vienna", "Prague", "Lisbon", "Athens", "Seoul", "Delhi", "Nairobi", "Boston", "Denver",
          "Quito", "Hanoi", "Warsaw"]
WEATHER = ["What's the weather in {c}?", "How is the weather in {c} today?", "Is it raining in {c}?",
           "Tell me the weather for {c}.", "weather {c}", "What is the temperature in {c} right now?"]
WEATHER_F = ["What's the weather in {c} in fahrenheit?", "How warm is it in {c}, in fahrenheit?"]
PAIR = ["What's the weather in {c} and {d}?", "Compare the weather in {c} and {d}."]
OPS = {"add": ("plus", "What is {a} plus {b}?", "Add {a} and {b}.", lambda a, b: a + b),
       "subtract": ("minus", "What is {a} minus {b}?", "Subtract {b} from {a}.", lambda a, b: a - b),
       "multiply": ("times", "What is {a} times {b}?", "Multiply {a} by {b}.", lambda a, b: a * b),
       "divide": ("divided by", "What is {a} divided by {b}?", "Divide {a} by {b}.", lambda a, b: round(a / b, 2))}
SMALL_TALK = [("Hello!", "Hello! How can I help you today?"), ("Thanks, that's all.", "You're welcome!"),
              ("Who are you?", "I am an assistant that can look up the weather and do arithmetic."),
              ("What can you do?", "I can tell you the weather in a city and calculate with two numbers."),
              ("Good morning", "Good morning! How can I help?"), ("Bye", "Goodbye!")]
GREETINGS = [("Say hello to {n}.", "Hello, {n}!"), ("Please greet {n} for me.", "Hi {n}, nice to meet you!"),
             ("Wish {n} a happy birthday.", "Happy birthday, {n}!")]
NAMES = ["Ada", "Alan", "Grace", "Linus", "Ken", "Barbara", "Edsger", "Margaret", "Dennis", "Frances", "Niklaus",
         "Radia", "Guido", "Anita", "Tim", "Sophie", "John", "Hedy", "Claude", "Katherine"]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy"]


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def weather_row(rng, city, question, unit=None):
    args = {"city": city} | ({"unit": unit} if unit else {})
    temp = rng.randint(-5, 35) if unit != "fahrenheit" else rng.randint(25, 95)
    cond = rng.choice(CONDITIONS)
    sym = "°F" if unit == "fahrenheit" else "°C"
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", args)]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"city": city, "temperature": temp,
                                                                             "condition": cond})},
            {"role": "assistant", "content": f"It is {temp}{sym} and {cond} in {city}."}]


def pair_row(rng, c, d, question):
    results = [(x, rng.randint(-5, 35), rng.choice(CONDITIONS)) for x in (c, d)]
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call(f"call_{k}", "get_weather", {"city": x})
                                                                 for k, x in enumerate((c, d), 1)]},
            *[{"role": "tool", "tool_call_id": f"call_{k}", "content": json.dumps({"city": x, "temperature": t,
                                                                                  "condition": w})}
              for k, (x, t, w) in enumerate(results, 1)],
            {"role": "assistant", "content": " ".join(f"It is {t}°C and {w} in {x}." for x, t, w in results)}]


def calc_row(rng, op, a, b):
    word, q1, q2, fn = OPS[op]
    result = fn(a, b)
    return [{"role": "user", "content": rng.choice([q1, q2]).format(a=a, b=b)},
            {"role": "assistant", "content": None,
             "tool_calls": [call("call_1", "calculate", {"operation": op, "a": a, "b": b})]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"result": result})},
            {"role": "assistant", "content": f"{a} {word} {b} is {result}."}]


def rows(rng, n, cities):
    out = []
    for i in range(n):
        kind = i % 10
        if kind < 4:
            c = rng.choice(cities)
            out.append(weather_row(rng, c, rng.choice(WEATHER).format(c=c)))
        elif kind == 4:
            c = rng.choice(cities)
            out.append(weather_row(rng, c, rng.choice(WEATHER_F).format(c=c), unit="fahrenheit"))
        elif kind == 5:
            c, d = rng.sample(cities, 2)
            out.append(pair_row(rng, c, d, rng.choice(PAIR).format(c=c, d=d)))
        elif kind < 9:
            out.append(calc_row(rng, rng.choice(list(OPS)), rng.randint(2, 99), rng.randint(2, 99)))
        else:  # no tool needed: small talk, or a greeting to pass on
            q, a = SMALL_TALK[i // 10] if i // 10 < len(SMALL_TALK) else rng.choice(GREETINGS)
            name = rng.choice(NAMES)
            out.append([{"role": "user", "content": q.format(n=name)}, {"role": "assistant", "content": a.format(n=name)}])
    return [{"messages": m, "tools": TOOLS} for m in out]


def main():
    here = Path(__file__).parent
    train = rows(random.Random(0), 300, CITIES)
    asked = {row["messages"][0]["content"] for row in train}
    # Held out: questions the training set never asks (small talk aside, which has few wordings).
    val = [row for row in rows(random.Random(1), 80, CITIES)
           if row["messages"][0]["content"] not in asked or len(row["messages"]) == 2][:40]
    for name, split in (("train", train), ("val", val)):
        with open(here / f"{name}.jsonl", "w") as f:
            for row in split:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
