"""The built wheel serves queries in a fresh virtual environment that has no torch, and ships
the demo bundle that `Recommender.load()` opens with no argument."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

QUERY_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    assert importlib.util.find_spec("torch") is None, "torch must not be importable here"
    import dpr
    rec = dpr.Recommender.load(sys.argv[1])
    ids = rec._engine.item_ids()
    hits = rec.query(ids[:5], "something funny, but no romance", k=5)
    assert len(hits) == 5, hits
    assert "torch" not in sys.modules
    demo = dpr.Recommender.load()
    demo_hits = demo.query(demo._engine.item_ids()[:5], "something funny, but no horror", k=10)
    assert len(demo_hits) == 10, demo_hits
    assert "torch" not in sys.modules
    print(json.dumps({"items": rec.num_items, "top": [h.title for h in hits],
                      "module": dpr.__file__, "demo": str(demo.path),
                      "demo_top": [h.title for h in demo_hits[:3]]}))
""")


@pytest.fixture(scope="module")
def demo_bundle() -> Path:
    """The checkout's demo bundle (what `maturin build` packs), built by `dpr build-demo` when
    the checkout has none yet. Not `dpr.recommender.DEMO_BUNDLE`: under a non-editable install
    that points into site-packages."""
    from dpr.cli import main

    demo = ROOT / "python" / "dpr" / "demo_bundle"
    if not (demo / "dpr.json").is_file():
        assert main(["build-demo", "--out", str(demo)]) == 0
    return demo


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, demo_bundle: Path) -> Path:
    if shutil.which("maturin") is None:
        pytest.fail("maturin is needed to build the wheel (pip install maturin)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(["maturin", "build", "--release", "--quiet", "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True)
    wheels = list(out.glob("dpr_recommender-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        packed = {name for name in archive.namelist() if name.startswith("dpr/demo_bundle/")}
    shipped = {f"dpr/demo_bundle/{f.relative_to(demo_bundle).as_posix()}"
               for f in demo_bundle.rglob("*") if f.is_file()}
    assert packed == shipped, "the wheel must carry the demo bundle, file for file"
    return wheels[0]


def _numpy_only_site(tmp_path: Path) -> Path:
    """A folder exposing this interpreter's numpy (the wheel's one dependency) and nothing else,
    so the fresh environment installs offline and cannot see torch."""
    site = tmp_path / "numpy-only"
    site.mkdir()
    numpy_dir = Path(np.__file__).parent
    (site / "numpy").symlink_to(numpy_dir)
    libs = numpy_dir.parent / "numpy.libs"
    if libs.is_dir():
        (site / "numpy.libs").symlink_to(libs)
    return site


def _tiny_bundle(out: Path) -> Path:
    """A small exported model (random weights, the real f16 prompt encoder)."""
    from dpr.export import export_bundle
    from test_recommender import _catalogue, _model

    return export_bundle(_model("sasrec"), _catalogue(), out)


def test_wheel_serves_without_torch(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    (Path(site.stdout.strip()) / "numpy_only.pth").write_text(str(_numpy_only_site(tmp_path)))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", site.stdout.strip(), str(wheel)], check=True,
                   capture_output=True)
    bundle = _tiny_bundle(tmp_path / "bundle")
    result = subprocess.run([str(python), "-c", QUERY_SCRIPT, str(bundle)], check=False,
                            capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(env_dir) in result.stdout, "dpr was imported from outside the fresh environment"
    assert json.loads(result.stdout)["demo"].startswith(str(env_dir)), "demo bundle not shipped"
    size_mb = wheel.stat().st_size / 2**20
    print(f"wheel {wheel.name}: {size_mb:.1f} MiB; {result.stdout.strip()}")
