"""The XLA flags of every process the suite runs: LLVM at its lowest optimization level (tests/conftest.py sets
them in the test process; a test that starts a process with its own XLA_FLAGS, e.g. a device count, adds them).

Most of a test's time on CPU is XLA compiling: at level 0 with the expensive LLVM passes off a train step compiles
in about half the time of the default -O2 (the embedded anytime job's step: 45 s vs 80 s of one core), and a test
runs a few steps of it. The programs and their numerics are XLA's (HLO passes are the same); only the machine
code is less optimized, so each process of a comparison (one device vs eight, a run vs its SIGKILLed resume)
compiles with the same flags. A program given its own `compiler_options` (a config's `xla_compiler_options`)
keeps them. XLA:CPU's classic elementwise emitters instead of its fusion (MLIR) emitters, as core_jax.train's
`cheap_compiler_options` compiles a run's init: they compile the suite's many small fusions faster
(tests/core/test_loss_spike_lines.py 86.8 -> 77.6 s CPU, tests/anytime/test_sparse_conv.py 168.0 -> 150.8 s);
every process of a comparison gets them, as it gets the LLVM level."""

import os

FAST_COMPILE = (
    '--xla_backend_optimization_level=0',
    '--xla_llvm_disable_expensive_passes=true',
    '--xla_cpu_use_fusion_emitters=false',
)


def with_fast_compile(flags: str = '') -> str:
  """`flags` (an XLA_FLAGS value) with FAST_COMPILE added where absent."""
  words = flags.split()
  return ' '.join(words + [f for f in FAST_COMPILE if f.split('=')[0] not in {w.split('=')[0] for w in words}])


def with_devices(devices: int) -> str:
  """The XLA_FLAGS of a test subprocess with `devices` host devices."""
  return with_fast_compile(f'--xla_force_host_platform_device_count={devices}')


def set_for_this_process() -> None:
  """Before the backend initializes (it reads XLA_FLAGS once); subprocesses inherit it through os.environ."""
  os.environ['XLA_FLAGS'] = with_fast_compile(os.environ.get('XLA_FLAGS', ''))
