"""Test session setup: four faked CPU devices, so every test also exercises data parallelism."""

import os

NUM_FAKE_DEVICES = 4

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={NUM_FAKE_DEVICES}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
