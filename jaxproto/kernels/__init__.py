"""Hot numeric kernels shared by methods: prototype distances, push, saliency."""
