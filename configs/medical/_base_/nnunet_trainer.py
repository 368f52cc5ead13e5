# nnU-Net v2's training defaults (nnUNetTrainer), as U-Mamba trains: 1000 epochs of 250 iterations (50 validation
# iterations), SGD lr 1e-2 with Nesterov momentum 0.99 and weight decay 3e-5, poly decay (exponent 0.9) per epoch,
# gradient-norm clipping at 12, a third of each batch forced to hold foreground, Dice + CE with deep supervision,
# checkpoint_best.pth chosen by the EMA of the pseudo Dice; after the last epoch every validation case of the fold is
# predicted whole (step 0.5, Gaussian weights, mirroring) and scored into validation/summary.json.
# Every key and its default: vssm/seg/seg_config.py. Patch and batch size come from the plans unless set here.
raw = None  # the nnU-Net raw dataset folder: --cfg-options raw=/data/nnUNet_raw/Dataset702_AbdomenMR
plans = None  # None: planned into <preprocessed>/nnUNetPlans.json on first use; or nnU-Net's own plans.json
preprocessed = None  # None: <work_dir>/preprocessed; share one folder between the folds of a dataset
fold = 0  # 0-4 of splits_final.json, or 'all' (U-Mamba's published models were trained on fold 'all')
deep_supervision = True
epochs = 1000
iterations_per_epoch = 250
val_iterations = 50
oversample_foreground = 0.33
optimizer = dict(name='sgd', lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5, schedule='poly',
                 poly_exponent=0.9)
clip_grad = 12.0
amp = 'bf16'  # the Mamba layers keep their scan in float32 inside autocast
workers = 8
validation = dict(enable=True, step_size=0.5, mirror=True, nsd_tolerance=2.0)
