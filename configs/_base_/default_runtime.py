# Runtime settings shared by the ImageNet recipes. Every key and its default: vssm/engine/config.py.
seed = 0
log_interval = 100  # optimizer steps between log lines
amp = 'bf16'  # recipes trained in float32 set amp = None
best_metric = 'eval_top1'  # recipes with EMA may select on 'ema_eval_top1'
