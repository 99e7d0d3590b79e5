"""A reference harness around TRL's `DPOTrainer` (trl 1.16): its DPO loss and metrics at step 0.

`trl_dpo_step0` builds a real `DPOTrainer` (policy and an explicit reference model, fp32, CPU), collates ALL
pairs into one batch with the trainer's own collator, and calls the trainer's own `compute_loss` on it under
`torch.no_grad()`: no optimizer step, so the numbers are those of the initial weights. The metrics are read back
from the trainer's metric store, exactly what its first logged step would report for that batch.

What TRL 1.16 scores for a conversational pair (`DPOTrainer._prepare_dataset` and `DataCollatorForPreference`):

* prompt_ids = apply_chat_template(prompt, add_generation_prompt=True, tokenize=True); for ChatML that is
  "<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n". No BOS or other special tokens are added.
* prompt+chosen = apply_chat_template(prompt + chosen) (no generation prompt), likewise for rejected. The completion
  is everything after the common token prefix of the prompt render and BOTH full renders (the minimum over chosen
  and rejected; normally = len(prompt_ids)). For ChatML the completion is therefore "{content}<|im_end|>\\n": the
  template's `<|im_end|>` (the EOS here) AND the trailing "\\n" after it are scored. No extra EOS is appended for
  conversational data (TRL appends EOS only to plain-text pairs that lack it).
* The sequence is prompt_ids + completion_ids; the collator truncates it to `max_length` (default 1024, keeping the
  start) and right-pads with the pad token (attention_mask 0). There is no `max_prompt_length` in 1.16; examples
  whose prompt alone is >= max_length are dropped. Short test pairs are never truncated.
* Each sequence's logp is the SUM over its completion tokens of log p(token | everything before it), each token
  scored from the logits at the previous position (labels = input_ids with non-completion positions at -100; TRL's
  fused LM head, temperature 1, no logit scaling for Llama). Prompt and padding tokens contribute nothing.
* loss = mean over pairs of -logsigmoid(beta * ((pc - rc) - (pr - rr))) for loss_type "sigmoid"; rewards/chosen =
  mean(beta*(pc - rc)), rewards/rejected = mean(beta*(pr - rr)), rewards/margins = mean of their difference,
  rewards/accuracies = mean(chosen reward > rejected reward) (strict), logps/chosen|rejected = mean policy logps.
* DPOConfig defaults in effect (none of them changes plain DPO): label_smoothing=0.0, ld_alpha=None (no length
  desensitisation), use_weighting=False (no WPO), loss_weights=None, f_divergence_type="reverse_kl", no RPO/SFT term
  (only if "sft" is added to loss_type), sync_ref_model=False, disable_dropout=True.

Settings this harness sets explicitly: bf16=False and fp16=False (TRL defaults bf16 to True), use_cpu=True,
gradient_checkpointing=False (TRL defaults it to True), precompute_ref_log_probs=False, padding_free=False,
report_to="none", a temporary output_dir, both models loaded in float32 and the reference passed as `ref_model`.
The tokenizer (and so the chat template) comes from `policy_dir`.
"""

from __future__ import annotations

import os
import tempfile
import warnings


def trl_dpo_step0(policy_dir, ref_dir, pairs: list[dict], beta: float = 0.1, loss_type: str = "sigmoid",
                  max_length: int | None = 1024) -> dict:
    """TRL DPOTrainer's metrics at step 0 for `policy_dir` against `ref_dir` on `pairs`, all in one batch.

    Each pair is {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}.
    Returns {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
    "logps/rejected", "tokens": [{"prompt_ids", "chosen_ids", "rejected_ids"} per pair, as scored], "per_pair":
    {"policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"}: lists of summed completion logps}.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(str(ref_dir), dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(
            output_dir=out, beta=beta, loss_type=[loss_type], max_length=max_length,
            bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
            precompute_ref_log_probs=False, padding_free=False, report_to="none", push_to_hub=False,
            per_device_train_batch_size=len(pairs), dataloader_num_workers=0, seed=0,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer)
        if len(trainer.train_dataset) != len(pairs):
            raise ValueError("TRL dropped pairs whose prompt fills max_length")

        # One batch of all pairs, in order, through TRL's own collator and input preparation.
        rows = [trainer.train_dataset[i] for i in range(len(pairs))]
        batch = trainer.data_collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in rows])
        inputs = trainer._prepare_inputs(batch)

        trainer.model.train()  # the mode of a training step (dropout is disabled by TRL anyway)
        trainer._metrics["train"].clear()
        with torch.no_grad(), trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, inputs)
            policy_c, policy_r = trainer.compute_ref_log_probs(trainer.model, inputs)
            ref_c, ref_r = trainer.compute_ref_log_probs(trainer.ref_model, inputs)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    n = len(pairs)
    ids, attention, completion = (inputs[k].cpu() for k in ("input_ids", "attention_mask", "completion_mask"))
    tokens = []
    for i in range(n):
        scored = {}
        for name, row in (("chosen_ids", i), ("rejected_ids", n + i)):
            real = attention[row].bool()
            seq, comp = ids[row][real], completion[row][real].bool()
            scored[name] = seq[comp].tolist()
            prompt = seq[~comp].tolist()
        tokens.append({"prompt_ids": prompt, **scored})

    out = {"loss": float(loss)}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        out[key] = float(metrics[key])
    out["tokens"] = tokens
    out["per_pair"] = {"policy_chosen": policy_c.tolist(), "policy_rejected": policy_r.tolist(),
                       "ref_chosen": ref_c.tolist(), "ref_rejected": ref_r.tolist()}
    return out
