"""The training stages, each ``identity -> finished already? -> setup -> loop -> write``: ``finetune``, ``imp`` (IMP
search), ``structured`` (super-ticket search) and ``share`` (multi-task sharing); ``predict`` and ``convert``. What
they share: ``context`` (the setup step, the reuse check, the loop), ``inputs`` (masks, model, tokenizer, reusable
weights) and ``outputs`` (logits, weights, saved members). No stage imports another."""
