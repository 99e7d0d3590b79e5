"""Held-out tool-call accuracy of a served model, through the official openai client.

    tunery serve --port 8000 &
    python examples/tools/measure.py --model runs/tools [--base-url http://127.0.0.1:8000/v1] [--data examples/tools/val.jsonl]

(--model: a served model's name, or a run folder, whose registry name is used.)

For each row: its first question, with the tools. A row whose first answer calls tools scores when the
answer's calls parse and equal the expected (function, arguments), in order; a row that needs no tool
scores when the answer calls none. Then the round trip, for rows whose calls were right: the model's own
assistant message (its call ids) and the tools' results (from the row) go back, and the final answer is
compared with the row's.
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _calls(message) -> list:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def _expected(message: dict) -> list:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]


def score(client, model: str, row: dict, max_tokens: int = 96) -> dict:
    """One row: {"kind": "call" | "no_tool", "ok": bool, "round_trip": bool | None}."""
    question, first = row["messages"][0], row["messages"][1]
    answer = client.chat.completions.create(model=model, messages=[question], tools=row["tools"], temperature=0,
                                            max_tokens=max_tokens).choices[0]
    want = _expected(first)
    if not want:
        return {"kind": "no_tool", "ok": not answer.message.tool_calls, "round_trip": None}
    ok = answer.finish_reason == "tool_calls" and _calls(answer.message) == want
    if not ok:
        return {"kind": "call", "ok": False, "round_trip": None}
    results = [m for m in row["messages"][2:] if m["role"] == "tool"]
    history = [question, answer.message.model_dump(exclude_none=True, exclude={"refusal", "annotations", "audio"})]
    history += [{"role": "tool", "tool_call_id": call.id, "content": result["content"]}
                for call, result in zip(answer.message.tool_calls, results)]
    final = client.chat.completions.create(model=model, messages=history, tools=row["tools"], temperature=0,
                                           max_tokens=max_tokens).choices[0]
    return {"kind": "call", "ok": True, "round_trip": final.message.content == row["messages"][-1]["content"]}


def measure(client, model: str, rows: list[dict], workers: int = 8) -> dict:
    with ThreadPoolExecutor(workers) as pool:  # concurrent requests: the server batches them
        scores = list(pool.map(lambda r: score(client, model, r), rows))
    calls = [s for s in scores if s["kind"] == "call"]
    plain = [s for s in scores if s["kind"] == "no_tool"]
    trips = [s["round_trip"] for s in calls if s["round_trip"] is not None]
    return {"rows": len(rows), "call_rows": len(calls), "calls_right": sum(s["ok"] for s in calls),
            "no_tool_rows": len(plain), "no_tool_right": sum(s["ok"] for s in plain),
            "round_trips": len(trips), "final_answers_right": sum(trips)}


def main():
    from openai import OpenAI

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="unused")
    ap.add_argument("--data", default=str(Path(__file__).parent / "val.jsonl"))
    ap.add_argument("--workers", type=int, default=8, help="concurrent requests (the server batches them)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.data)]
    model = args.model
    if (Path(model) / "run.json").is_file():
        from tunery.run_folder import RunFolder

        model = RunFolder(Path(model)).read_info().name
    result = measure(OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=3600), model, rows,
                     workers=args.workers)
    print(json.dumps(result))
    print(f"held-out calls right: {result['calls_right']}/{result['call_rows']}, no-tool answers without a call: "
          f"{result['no_tool_right']}/{result['no_tool_rows']}, final answers after the tool result: "
          f"{result['final_answers_right']}/{result['round_trips']}")


if __name__ == "__main__":
    main()
