# Segmentation quick start: a small U-Mamba_Bot learns four brain tissue labels on axial slices of the MNI152 2009
# template that nilearn ships, on a CPU, with nothing to download.
#   python tools/train_seg.py configs/demo/seg_quickstart.py
# The first run writes the dataset once (vssm.data.mni152: 1 mm axial slices as PNG, labels background / CSF and
# other tissue / grey matter / white matter from the template's probability maps; 65 training and 36 validation
# slices from separate 12 mm slabs 4 mm apart, listed in the dataset's splits_final.json), plans it (nnU-Net's
# rules), preprocesses it, trains, then predicts the validation slices whole (sliding window, mirroring) and scores
# them into work_dirs/seg_quickstart/validation/summary.json (Dice and NSD at 2 mm per class and slice). Target: a
# mean foreground Dice of at least 0.90 in under 10 minutes on a 2-core CPU (measured: 0.919 in 3 minutes; seeds 1
# and 2: 0.925, 0.920). Then, as for any dataset (here every slice, the training ones too):
#   python tools/predict_seg.py -i data/nnUNet_raw/Dataset950_MNI152Slices1mm/imagesTr \
#       -o work_dirs/seg_quickstart/predictions -m work_dirs/seg_quickstart --threads 1
#   python tools/evaluate_seg.py data/nnUNet_raw/Dataset950_MNI152Slices1mm/labelsTr \
#       work_dirs/seg_quickstart/predictions
builtin = dict(name='mni152', dim=2, spacing_mm=1)
raw = 'data/nnUNet_raw/Dataset950_MNI152Slices1mm'
splits = raw + '/splits_final.json'  # the slab split (nnU-Net's random folds would mix neighbouring slices)
preprocessed = 'data/nnUNet_preprocessed/Dataset950_MNI152Slices1mm'
planner = dict(configurations=('2d',), num_foreground_voxels=1e5)  # z-score needs no dataset intensity statistics
configuration = '2d'
fold = 0
net = dict(name='umamba_bot')
# the planned 2-D net (6 stages up to 512 features) is far too slow for a CPU: 4 stages of 16..128 features, one
# residual block each (0.6 M parameters)
network = dict(n_stages=4, features_per_stage=[16, 32, 64, 128], kernel_sizes=[[3, 3]] * 4,
               strides=[[1, 1], [2, 2], [2, 2], [2, 2]], n_conv_per_stage=[1, 1, 1, 1],
               n_conv_per_stage_decoder=[1, 1, 1])
patch_size = (64, 64)
batch_size = 8
epochs = 12
iterations_per_epoch = 50
val_iterations = 2
optimizer = dict(name='adamw', lr=1e-2, weight_decay=1e-4, poly_exponent=0.9)
validation = dict(enable=True, step_size=0.5, mirror=True, nsd_tolerance=2.0, batch_size=4)
workers = 0
seed = 0
log_interval = 25
# Tensors this small gain nothing from several intra-op threads, and one thread does not slow down when other
# processes share the CPU (measured on the shared 2-core machine: two threads made each step about ten times slower).
cpu_threads = 1
