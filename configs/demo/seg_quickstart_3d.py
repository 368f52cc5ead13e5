# The segmentation quick start in 3-D: a small U-Mamba_Bot on axial slabs of the MNI152 2009 template (nilearn), the
# nnU-Net '3d_fullres' configuration, on a CPU, with nothing to download.
#   python tools/train_seg.py configs/demo/seg_quickstart_3d.py
# The first run writes the dataset once (vssm.data.mni152: 2 mm NIfTI volumes, one per 24 mm axial slab of the
# brain, slabs 4 mm apart; the 3rd and 6th slab are validation, listed in the dataset's splits_final.json; labels as
# in configs/demo/seg_quickstart.py). The affine of every slab is kept, so predictions overlay the template in any
# NIfTI viewer. Six volumes make a demonstration of the 3-D path, not a benchmark (one run: mean foreground Dice 0.79
# on the two validation slabs, 5 minutes on a 2-core CPU).
_base_ = ['./seg_quickstart.py']
builtin = dict(name='mni152', dim=3, spacing_mm=2)
raw = 'data/nnUNet_raw/Dataset951_MNI152Slabs2mm'
splits = raw + '/splits_final.json'
preprocessed = 'data/nnUNet_preprocessed/Dataset951_MNI152Slabs2mm'
planner = dict(configurations=('3d_fullres',), num_foreground_voxels=1e5)
configuration = '3d_fullres'
# 4 stages, the depth (12 slices per slab) pooled once, in the deepest stage
network = dict(n_stages=4, features_per_stage=[16, 32, 64, 128], kernel_sizes=[[3, 3, 3]] * 4,
               strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1, 1],
               n_conv_per_stage_decoder=[1, 1, 1])
patch_size = (12, 64, 64)
batch_size = 2
epochs = 10
iterations_per_epoch = 30
