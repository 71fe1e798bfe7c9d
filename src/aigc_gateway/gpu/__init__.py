"""GPUs of this host: discovery through NVML, merged with the admin's declared inventory."""
