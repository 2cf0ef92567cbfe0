//! Resolving the container user and groups inside the container's rootfs.
