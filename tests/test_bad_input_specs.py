"""Hypothesis on campaign specs and store paths: bad input is refused by name, nothing is
written outside the store.

Specs: a valid ``CampaignSpec`` with some fields replaced by what a user (or a script) could
write: NaN, infinities, numbers of 10**30, negative budgets, grids of 0 or a billion
candidates, extents that are empty or reach outside the library, names with path separators,
wrong types, unknown keys. Each is either refused with a ``pydantic.ValidationError`` whose
first line names a field that was replaced, or accepted and then sane (finite, inside the
library, plain names, a report beside the store); never another exception. ``coorch run`` on
the refused ones ends in one or two lines and status 2.

Store paths: relative and absolute paths through ``..``, ``.`` and a symlink, record ids and
modality names with traversal, raw backend keys: opening a store and writing a measurement
changes nothing in the surrounding folder tree but the store's own folder (and the folders
above it that hold it).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from coorch.benchmarks import fixtures as syn
from coorch.deployments.config import MAX_CANDIDATES, CampaignSpec, known_extent
from coorch.errors import validation_lines
from coorch.storage import CampaignStore
from coorch.storage.backend import LocalBackend

INSTRUMENT = {
    "name": "afm-twin",
    "kind": "afm",
    "modality": "pfm_loop",
    "url": "http://127.0.0.1:9",
    "token_file": "no-such.token",  # a spec that passes stops at its token in `coorch run`
}
BASE: dict[str, Any] = {"name": "c", "instruments": [INSTRUMENT], "store": "runs/c.zarr"}

# ---------------------------------------------------------------- what a user could write

huge = st.sampled_from([10**30, -(10**30), 2**63, 2**64 + 1, 10**400, 1e308, -1e308])
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-1000, max_value=10**7),
    huge,
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "x0"]), st.integers(), max_size=2),
)
tricky_names = st.sampled_from(
    ["../escape", "a/b", "..", ".", ".hidden", "a\\b", "x\x00y", "tab\there", "", "  ",
     "/etc/passwd", "ok-name", "Raman 1", "décor", "x" * 200]
)  # fmt: skip
names = st.one_of(tricky_names, st.text(max_size=12), wrong_types)
paths = st.one_of(
    st.sampled_from(
        [".", "..", "/", "", "a/../b.zarr", "../../c.zarr", "/abs/c.zarr", "c.zarr/", "x\x00.zarr",
         "s3://bucket/../c.zarr", "s3://", "file:///", "file://c.zarr", "memory://m/c.zarr"]
    ),
    names,
)  # fmt: skip
pair = st.lists(numbers, min_size=2, max_size=2)
extents = st.one_of(st.none(), wrong_types, st.lists(pair, min_size=2, max_size=2))
grids = st.one_of(
    wrong_types,
    st.lists(st.integers(min_value=-2, max_value=10**7), min_size=2, max_size=2),
    st.lists(st.integers(1, 50), min_size=1, max_size=3),
)

#: Top-level field -> what to put there instead.
TOP = {
    "name": names,
    "library": st.one_of(st.sampled_from(["smbfo", "alscbn", "real-wafer-7"]), wrong_types),
    "budget": st.one_of(numbers, wrong_types),
    "seeds_per_instrument": st.one_of(numbers, wrong_types),
    "extent": extents,
    "grid": grids,
    "refit_every": numbers,
    "seed": numbers,
    "store": paths,
    "report": st.one_of(st.none(), paths),
    "policy": st.one_of(st.sampled_from(["random", "ucb", "magic"]), wrong_types),
    "instruments": st.one_of(wrong_types, st.just([]), st.just([INSTRUMENT, INSTRUMENT])),
    "dask": st.one_of(
        wrong_types,
        st.fixed_dictionaries({"n_workers": numbers}),
        st.fixed_dictionaries({"threads_per_worker": numbers}),
    ),
    "steering": st.one_of(
        wrong_types,
        st.fixed_dictionaries(
            {"mode": st.just("review"), "token_file": st.just("s.token"), "deadline_s": numbers}
        ),
        st.fixed_dictionaries({"below": numbers}),
        st.fixed_dictionaries({"target_weight": numbers}),
        st.fixed_dictionaries({"mode": st.just("votes")}),
    ),  # fmt: skip
    "budjet": numbers,  # an unknown key
}
#: Instrument field -> what to put there instead.
INSTRUMENT_FIELDS = {
    "name": names,
    "kind": names,
    "modality": st.one_of(names, st.just("decisions")),
    "url": st.one_of(
        st.sampled_from(["not a url", "ftp://x", "http://", "file:///etc", "127.0.0.1:80"]),
        wrong_types,
    ),
    "latent_dim": numbers,
    "descriptor": st.one_of(st.just("vae"), wrong_types),
    "log_scale": st.one_of(st.just(True), wrong_types),
    "token_file": wrong_types,
    "tokenfile": st.just("t"),  # an unknown key
}


@st.composite
def bad_specs(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A spec dict with 1-3 top-level or instrument fields replaced, and the replaced fields'
    top-level names (what an error must name)."""
    spec = {**BASE, "instruments": [dict(INSTRUMENT)]}
    keys = draw(st.lists(st.sampled_from(list(TOP) + ["instrument"]), min_size=1, max_size=3))
    changed = set()
    for key in keys:
        if key == "instrument":
            field = draw(st.sampled_from(list(INSTRUMENT_FIELDS)))
            now = spec["instruments"]
            one = (
                now[0] if isinstance(now, list) and now and isinstance(now[0], dict) else INSTRUMENT
            )
            spec["instruments"] = [{**one, field: draw(INSTRUMENT_FIELDS[field])}]
            changed.add("instruments")
        else:
            spec[key] = draw(TOP[key])
            changed.add(key)
    return spec, changed


def _validate(spec: dict[str, Any]) -> CampaignSpec | ValidationError:
    """The spec, or its ValidationError; any other exception fails the test."""
    try:
        return CampaignSpec.model_validate(spec)
    except ValidationError as exc:
        return exc


def _assert_sane(spec: CampaignSpec) -> None:
    """What an accepted spec promises the flow."""
    (x0, x1), (y0, y1) = spec.library_extent()
    assert all(math.isfinite(v) for v in (x0, x1, y0, y1)) and x0 < x1 and y0 < y1
    known = known_extent(spec.library)
    if known is not None:
        (kx0, kx1), (ky0, ky1) = known
        assert kx0 <= x0 and x1 <= kx1 and ky0 <= y0 and y1 <= ky1
    assert 1 <= spec.grid[0] * spec.grid[1] <= MAX_CANDIDATES
    assert 1 <= spec.budget <= 1_000_000 and 0 <= spec.seed < 2**32
    plain = [spec.name, *(i.name for i in spec.instruments)]
    for name in plain + [i.modality for i in spec.instruments]:
        assert name.strip() and "/" not in name and "\\" not in name and not name.startswith(".")
    assert math.isfinite(spec.steering.deadline_s) and spec.steering.deadline_s > 0
    # JSON-plain, no NaN anywhere: what Prefect stores as the flow's parameters
    again = CampaignSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    _assert_report_beside_the_store(spec)


def _assert_report_beside_the_store(spec: CampaignSpec) -> None:
    """``report_path()``: None, or a normalised path; by default beside (not in) the store."""
    path = spec.report_path()
    if path is None:
        return
    assert os.path.normpath(path) == str(path) and ".." not in path.parts[path.parts.count("..") :]
    if spec.report is None:
        store = Path(os.path.normpath(spec.store.removeprefix("file://")))
        assert path.parent == store.parent and path.name == f"{store.stem}-report.html"
        assert path.name not in ("", ".", "..")


@settings(max_examples=300, deadline=None)
@given(bad_specs())
def test_a_bad_spec_is_refused_by_field_or_accepted_sane(case):
    spec, changed = case
    got = _validate(spec)
    event("accepted" if isinstance(got, CampaignSpec) else "refused")
    if isinstance(got, CampaignSpec):
        _assert_sane(got)
        return
    lines = validation_lines(got, CampaignSpec)
    assert 1 <= len(lines) <= 2
    named = lines[0].split(":", 1)[0].split(".")[0]
    said = " ".join(lines)
    assert named in changed or any(key in said for key in changed), (changed, lines)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-specs")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=bad_specs())
def test_coorch_run_on_a_refused_spec_is_two_lines_and_status_2(case, folder, monkeypatch):
    """The refused ones written as YAML files and given to the real ``coorch run``."""
    from coorch.cli import app

    spec, _ = case
    got = _validate(spec)
    assume(isinstance(got, ValidationError))
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    monkeypatch.setenv("COORCH_FACILITY", str(folder / "none"))
    monkeypatch.delenv("COORCH_DEBUG", raising=False)
    res = CliRunner().invoke(app, ["run", str(path)], prog_name="coorch")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.stderr, res.exception)
    assert 1 <= len(lines) <= 2 and all(ln.startswith(f"coorch run: {path}: ") for ln in lines)


def test_the_named_errors_read_well():
    """A few refusals as a user sees them (one line each)."""

    def first(**over: Any) -> str:
        got = _validate({**BASE, **over})
        assert isinstance(got, ValidationError), over
        return validation_lines(got, CampaignSpec)[0]

    assert first(budget=float("nan")).startswith("budget: ")
    assert "finite" in first(extent=[[0, float("inf")], [0, 1]])
    assert first(extent=[[0, 12], [0, 1]]).startswith("extent: ")
    assert "outside the smbfo library" in first(extent=[[0, 12], [0, 1]])
    assert "x0 < x1" in first(extent=[[5, 5], [0, 1]])
    assert first(grid=[0, 5]).startswith("grid.0: ")
    assert "candidates" in first(grid=[100_000, 100_000])
    assert first(name="../../etc").startswith("name: ")
    assert "holds '/'" in first(instruments=[{**INSTRUMENT, "name": "a/b"}])
    assert first(library="wafer-7").startswith("library: ") and "extent" in first(library="w")
    assert "names no folder" in first(store="..")
    assert first(seed=-1).startswith("seed: ")
    assert first(instruments=[{**INSTRUMENT, "url": "afm:8101"}]).startswith("instruments.0.url")
    ok = _validate({**BASE, "library": "wafer-7", "extent": [[0, 50], [0, 50]]})
    assert isinstance(ok, CampaignSpec) and ok.library_extent() == ((0, 50), (0, 50))


# ---------------------------------------------------------------- store paths


def _tree(top: Path) -> set[str]:
    """Every file, folder and link under ``top``, as paths relative to it (links not followed)."""
    out = set()
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, name), top))
    return out


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _assert_only_the_store_changed(top: Path, before: set[str], root: Path) -> None:
    """New entries under ``top`` are the store folder (as the kernel resolves it: through a
    symlink, its target), what is inside it, or the folders above it that ``mkdir -p`` made."""
    real = os.path.realpath(root)
    for rel in _tree(top) - before:
        new = str(top / rel)  # a physical path: os.walk does not follow links
        assert _inside(new, real) or _inside(real, new), (rel, str(root))


SEGMENT = st.sampled_from(["..", ".", "a", "b", "c.zarr", "link", ""])


@settings(max_examples=40, deadline=None)
@given(segments=st.lists(SEGMENT, min_size=1, max_size=5), absolute=st.booleans())
def test_a_store_path_writes_nothing_outside_its_folder(segments, absolute):
    """Paths through ``..``, ``.``, empty segments and a symlink to a folder elsewhere, from a
    working folder two levels down: everything written lands in the store's folder."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp).resolve()
        work = top / "w1" / "w2"
        work.mkdir(parents=True)
        (top / "elsewhere").mkdir()
        (work / "link").symlink_to(top / "elsewhere")
        url = "/".join(segments)
        url = f"{work}/{url}" if absolute else url
        root = Path(os.path.abspath(os.path.join(work, url)))
        assume(_inside(os.path.realpath(root), str(top)) and url.strip("/") != "")
        before = _tree(top)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            with CampaignStore.open(url) as store:
                assert store.append_measurement(syn.measurement(0))
            assert store.url == str(root)  # normalised: "a/../b" is "b"
        finally:
            os.chdir(cwd)
        _assert_only_the_store_changed(top, before, root)


ids = st.one_of(
    st.sampled_from(["../../escape", "/etc/passwd", "..", ".", "a/b", "%2e%2e", "x\x00y", ""]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)


@settings(max_examples=40, deadline=None)
@given(measurement_id=ids, modality=st.one_of(ids, st.just("pfm_loop")))
def test_record_ids_and_modalities_cannot_climb_out_of_the_store(measurement_id, modality):
    """An id or a modality an instrument sends (they become journal keys and group names) is
    stored inside the store or refused with a ValueError; nothing appears beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp).resolve()
        root = top / "deep" / "c.zarr"
        m = syn.measurement(0).model_copy(
            update={"measurement_id": measurement_id, "modality": modality}
        )
        with CampaignStore.open(str(root)) as store:
            before = _tree(top)
            try:
                stored = store.append_measurement(m)
            except ValueError:
                stored = False
            store.flush()
            if stored:
                assert measurement_id in store.measurement_ids()
        _assert_only_the_store_changed(top, before, root)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.sampled_from(["..", ".", "", "k", "c", "0", "/"]), min_size=1, max_size=5))
def test_a_backend_key_that_climbs_out_is_refused(parts):
    """The last line: a raw key with ``..``, ``.``, an empty segment or a leading '/' is a
    ValueError at the backend; any other key is written inside the root."""
    key = "/".join(parts)
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp).resolve()
        backend = LocalBackend(top / "store")
        before = _tree(top)
        segments = key.split("/")
        bad = key.startswith("/") or any(p in ("", ".", "..") for p in segments)
        if bad:
            with pytest.raises(ValueError, match="not a relative key inside the store"):
                backend.write_many({key: b"x"})
        else:
            backend.write_many({key: b"x"})
            assert backend.read(key) == b"x"
        _assert_only_the_store_changed(top, before, top / "store")


def test_an_object_store_url_with_dots_is_refused():
    """``s3://bucket/a/../c.zarr``: S3 would keep "a/../c.zarr" as a literal key prefix while a
    file system climbs; neither is what the user meant."""
    with pytest.raises(ValueError, match="'..' segment"):
        CampaignStore.open("memory://bucket/a/../c.zarr")
    from coorch.storage.backend import FsspecBackend

    backend = FsspecBackend("memory://bucket/keys.zarr")
    with pytest.raises(ValueError, match="not a relative key"):
        backend.write_many({"../outside": b"x"})


def test_a_folder_that_is_not_a_campaign_store_is_not_touched(tmp_path):
    """A plain zarr store (or a zarr.json that is not JSON) is refused before anything, a lock
    file included, is written into it."""
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array(
        "a", shape=(1,), dtype="i1"
    )
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{oops")
    before = _tree(tmp_path)
    for name, why in (("plain.zarr", "coorch did not write"), ("junk.zarr", "not JSON")):
        for create in (True, False):
            with pytest.raises(ValueError, match=why):
                CampaignStore.open(str(tmp_path / name), create=create)
    assert _tree(tmp_path) == before
