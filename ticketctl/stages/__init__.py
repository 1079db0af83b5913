"""The training stages, each ``identity -> finished already? -> setup -> loop -> write`` over ``setup``:
``finetune``, ``imp`` (IMP search), ``structured`` (super-ticket search) and ``share`` (multi-task sharing).
No stage imports another."""
