"""OSS-Net algorithm (occupancy networks for segmentation); filled in by the OSS-Net model issue."""
