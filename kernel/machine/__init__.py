"""Machine-dependent layer: the kernel's only door to the hardware (FreeBSD's MD split)."""
