"""tunery: fine-tune pretrained language models on your own examples.

Python API (the CLI calls the same functions):
    tunery.check_dataset(path, model="default")   -> the data doctor's report (dict)
    tunery.train(config)                          -> a fine-tuning run (folder, metrics)
    tunery.generate(model, prompt)                -> one answer
    tunery.Generator(model).chat([...])           -> batched answers (constraints=: each held to a format)
    tunery.AnswerFormat(choices=[...])            -> a format answers must have (json_schema, json_object, regex, choices)
    tunery.merge_run(run, out)                    -> a standalone merged model
    tunery.resolve_model(ref)                     -> where a model reference points
    tunery.retrain(name, base)                    -> a registered model's recipe re-run on a new base
    tunery.reeval(name, base=None)                -> its recorded evaluation re-run
    tunery.build_index(["docs/"], "my-index")      -> a retrieval index built or updated (report dict)
    tunery.Index.open("my-index").search("query")  -> the best matching chunks (Hit)

Names load on first use, so `import tunery` (and `tunery --help`) stays instant.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "config", "TrainConfig": "config", "AnswerFormat": "config", "TuneryError": "errors", "check_dataset": "data",
    "Generator": "generation", "generate": "generation", "merge_run": "export", "resolve_model": "models",
    "Run": "training", "train": "training", "retrain": "workflows", "reeval": "workflows",
    "build_index": "retrieval", "Index": "retrieval",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'tunery' has no attribute {name!r}")
