# VM-UNet on ISIC 2017 (skin lesions, binary), VM-UNet's recipe (configs/medical/_base_/vm_unet_isic.py):
#   python tools/train_seg.py configs/medical/vm_unet_isic17.py \
#       --cfg-options raw=/data/nnUNet_raw/DatasetXXX_ISIC2017 splits=/data/isic2017_split.json
_base_ = ['./_base_/vm_unet_isic.py']
