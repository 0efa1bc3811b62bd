"""Cloud TPU slices by their gcloud accelerator type, and compile-only devices for them.

`compile_only_devices("v4-32")` gives libtpu's compile-only `TpuDevice`s of that slice on any
machine (no TPU needed), so a program can be compiled for it ahead of time (hybridir.cloud.aot).
Usable HBM is what XLA reports as available when a program does not fit (measured with
libtpu 0.0.42.1: v4 30.75G, v5e 15.75G, v5p 95.74G, v6e 31.25G); nominal HBM is the spec sheet's.
"""
import dataclasses
import math
import os
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Family:
  prefix: str              # gcloud's: v4-32, v5litepod-16, v5p-128, v6e-256
  topology_prefix: str     # libtpu's topology name: v4:2x2x4, v5e:4x4, v5:4x4x4, v6e:16x16
  cores_per_chip: int      # gcloud counts TensorCores in v4/v5p names, chips in v5e/v6e names
  hbm_bytes: int           # per chip, nominal
  usable_hbm_bytes: int    # per chip, as XLA reports it available
  shapes: dict             # accelerator-type number -> chip grid (gcloud's default topology)
  megacore: bool           # two TensorCores act as one device


def _gib(value: float) -> int:
  return int(round(value * GIB))


_CUBES = {8: (2, 2, 1), 16: (2, 2, 2), 32: (2, 2, 4), 64: (2, 4, 4), 128: (4, 4, 4),
          256: (4, 4, 8), 512: (4, 8, 8), 1024: (8, 8, 8), 1536: (8, 8, 12), 2048: (8, 8, 16),
          4096: (8, 16, 16)}
_PLANES = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
           256: (16, 16)}

FAMILIES = {
    "v4": Family("v4", "v4", 2, _gib(32), _gib(30.75), _CUBES, True),
    "v5litepod": Family("v5litepod", "v5e", 1, _gib(16), _gib(15.75), _PLANES, False),
    "v5p": Family("v5p", "v5", 2, _gib(95), _gib(95.74),
                  {**_CUBES, 8192: (16, 16, 16), 12288: (16, 16, 24)}, True),
    "v6e": Family("v6e", "v6e", 1, _gib(32), _gib(31.25), _PLANES, False),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  family: Family
  shape: tuple            # chips along each axis
  chips_per_host: int

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def hosts(self) -> int:
    return self.chips // self.chips_per_host

  @property
  def topology(self) -> str:
    return f"{self.family.topology_prefix}:{'x'.join(map(str, self.shape))}"

  @property
  def host_bounds(self) -> tuple:
    """Chips per host along each axis: a 2x2 tray, or the whole single-host slice."""
    if self.hosts == 1:
      return self.shape + (1,) * (3 - len(self.shape))
    return (2, 2, 1)

  @property
  def wrap(self) -> tuple:
    """Torus links: full 4x4x4 cubes (v4, v5p) wrap on every axis; a whole 16x16 v5e/v6e pod
    on its two axes."""
    if len(self.shape) == 3:
      cube = all(d % 4 == 0 for d in self.shape)
      return (cube,) * 3
    return (self.shape == (16, 16),) * 2 + (False,)


_NAME = re.compile(r"^(v4|v5litepod|v5p|v6e)-(\d+)$")


def accelerator_types() -> list[str]:
  return [f"{f.prefix}-{n}" for f in FAMILIES.values() for n in f.shapes]


def get_slice(accelerator_type: str) -> Slice:
  """The slice gcloud calls `accelerator_type` (v4-32: 16 chips, 4 hosts)."""
  match = _NAME.match(accelerator_type)
  family = FAMILIES[match.group(1)] if match else None
  number = int(match.group(2)) if match else None
  if family is None or number not in family.shapes:
    raise ValueError(f"unknown accelerator type {accelerator_type!r}; expected one of "
                     + ", ".join(accelerator_types()))
  shape = family.shapes[number]
  chips = math.prod(shape)
  return Slice(accelerator_type, family, shape, chips if chips <= 8 and len(shape) == 2 else
               min(chips, 4))


def compile_only_devices(tpu_slice: Slice) -> list:
  """libtpu's compile-only devices of the slice, one per chip (megacore), ordered by host."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # No metadata server off Cloud.
  # Compile-only devices own no chip: let several processes (tests, a --check) load libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  options = dict(chips_per_host_bounds=tpu_slice.host_bounds, wrap=tpu_slice.wrap)
  if tpu_slice.family.megacore:
    options["chip_config_name"] = "megacore"
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=tpu_slice.topology,
                                           **options).devices
  except Exception as e:  # libtpu missing or too old: one clear line.
    raise RuntimeError(f"no compile-only devices for {tpu_slice.accelerator_type} "
                       f"({tpu_slice.topology}): {str(e).splitlines()[0]} (pip install "
                       "-e '.[aot]' installs the libtpu that matches jax)") from e
  if len(devices) != tpu_slice.chips:
    raise RuntimeError(f"{tpu_slice.topology}: libtpu gave {len(devices)} devices for "
                       f"{tpu_slice.chips} chips")
  return sorted(devices, key=lambda d: (d.process_index, d.id))
