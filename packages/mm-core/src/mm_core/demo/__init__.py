"""`mm-run demo`: the whole workflow (data, model, convert, finetune, evaluate, convert back,
reload in transformers) on one CPU in minutes, through the same commands users run on a cluster."""
