"""The training engine behind `mm-run finetune`: config, mesh, stages, loss, optimizer, checkpoints."""
