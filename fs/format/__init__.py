"""On-disk format of ext2/3/4 images, declared with construct."""
