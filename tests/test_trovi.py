"""trovi.json: an RO-Crate that Trovi's GitHub importer can read.

What the importer reads is known from its source, not from a live import: ChameleonCloud/trovi,
trovi/importing/views.py (see the comment in templates/project/trovi.json.jinja). It writes the
fetched file as `trovi.json`, reads it with ro-crate-py with Metadata.BASENAME set to that name
(rocrate 0.11, whose lookup follows the override), dereferences the root dataset `./` and takes
name, disambiguatingDescription, description, keywords.split(","), each author's name/email/
affiliation and every actionApplication typed SoftwareApplication with a trovi_type. rocrate 0.16
(our dev lock) looks for the descriptor under `ro-crate-metadata.json` only, so `read_as_trovi`
checks the descriptor is `trovi.json` and renames it in a temporary copy before reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from reprostack.generate import render
from rocrate.rocrate import ROCrate

# trovi/models.py, ArtifactVersionSetup.ArtifactVersionSetupType
TROVI_SETUP_TYPES = {"jupyterhub", "isolated_jupyter", "source_code", "image", "heat_template"}
# Quotes, an apostrophe, non-ASCII and characters Jinja's tojson escapes (<, >, &)
ODD_AUTHOR = 'Zoë "Z" O\'Brien <Ŀab & Co>'


def rendered(tmp: Path, data: dict[str, str]) -> Path:
    """The template rendered by Copier alone (no git/DVC set-up: trovi.json needs neither)."""
    render(tmp / "project", data, defaults=True)
    return tmp / "project"


@pytest.fixture(scope="module")
def pytorch_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rendered(tmp_path_factory.mktemp("trovi"), {})


@pytest.fixture(scope="module")
def sklearn_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # author_email / author_affiliation are optional questions: written when answered, left out
    # when empty (the pytorch project above takes the empty defaults).
    return rendered(tmp_path_factory.mktemp("trovi"), {
        "framework": "sklearn", "chameleon_site": "CHI@UC", "author": ODD_AUTHOR,
        "author_email": "zoe@example.org", "author_affiliation": "Univ. of Ŀ",
    })


def read_as_trovi(path: Path, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The import of ChameleonCloud/trovi's ArtifactImportView._parse_git_url, from a local file.

    Returns the raw JSON-LD and the artifact data the importer would build from it.
    """
    document = json.loads(path.read_text(encoding="utf-8"))
    descriptors = [e for e in document["@graph"] if e.get("about") == {"@id": "./"}]
    # The importer only finds a descriptor whose @id is its file name, trovi.json.
    assert [d["@id"] for d in descriptors] == ["trovi.json"]
    assert descriptors[0]["@type"] == "CreativeWork"
    assert descriptors[0]["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    copy = json.loads(json.dumps(document))
    for entity in copy["@graph"]:
        if entity["@id"] == "trovi.json":
            entity["@id"] = "ro-crate-metadata.json"
    crate_dir = tmp / "crate"
    crate_dir.mkdir()
    (crate_dir / "ro-crate-metadata.json").write_text(json.dumps(copy), encoding="utf-8")

    root = ROCrate(crate_dir).dereference("./")
    assert root is not None and root.type == "Dataset"
    keywords, authors, apps = root.get("keywords"), root.get("author"), root.get("actionApplication", [])
    # The importer calls keywords.split(",") and iterates author and actionApplication: a list
    # there, a single reference would be iterated key by key.
    assert isinstance(keywords, str), keywords
    assert isinstance(authors, list) and isinstance(apps, list), (authors, apps)
    artifact = {
        "title": root.get("name"),
        "short_description": root.get("disambiguatingDescription"),
        "long_description": root.get("description"),
        "tags": [t.strip() for t in keywords.split(",")],
        "authors": [
            {"type": a.type, "full_name": a.get("name"), "email": a.get("email"),
             "affiliation": a.get("affiliation")}
            for a in authors
        ],
        "environment_setup": [
            {"type": o.get("trovi_type"), "arguments": o.get("trovi_arguments")}
            for o in apps
            if o.type == "SoftwareApplication" and o.get("trovi_type")
        ],
    }
    return document, artifact


def test_pytorch_crate_reads_like_a_trovi_import(pytorch_project: Path, tmp_path: Path) -> None:
    document, artifact = read_as_trovi(pytorch_project / "trovi.json", tmp_path)
    assert document["@context"] == "https://w3id.org/ro/crate/1.1/context"
    assert artifact["title"] == "digits-repro"
    short = artifact["short_description"]
    assert "PyTorch" in short and "sample" in short and "\n" not in short
    long = artifact["long_description"]
    for words in ("snakemake provision", "snakemake --cores all", "snakemake teardown", "CHI@TACC",
                  "gpu_rtx_6000"):
        assert words in long, words
    assert artifact["tags"] == ["reproducibility", "machine learning", "snakemake", "dvc", "mlflow",
                                "pytorch"]
    # The default author, and no empty email/affiliation: Trovi's ArtifactAuthor.email is a
    # required EmailField, so an empty string would be refused where a missing one says what is missing.
    assert artifact["authors"] == [
        {"type": "Person", "full_name": "A. Researcher", "email": None, "affiliation": None}
    ]
    assert '"email"' not in (pytorch_project / "trovi.json").read_text(encoding="utf-8")
    # One environment, of a type Trovi knows; its arguments a string (a JSON object there makes
    # ro-crate-py raise "no @id in {...}" and the import fail).
    assert artifact["environment_setup"] == [{"type": "jupyterhub", "arguments": "{}"}]
    assert artifact["environment_setup"][0]["type"] in TROVI_SETUP_TYPES
    assert json.loads(artifact["environment_setup"][0]["arguments"]) == {}


def test_sklearn_crate_with_an_odd_author(sklearn_project: Path, tmp_path: Path) -> None:
    raw = (sklearn_project / "trovi.json").read_bytes()
    raw.decode("ascii")  # tojson escapes non-ASCII: the file is plain ASCII JSON
    _, artifact = read_as_trovi(sklearn_project / "trovi.json", tmp_path)
    assert "scikit-learn" in artifact["short_description"]
    assert "CHI@UC" in artifact["long_description"]
    assert artifact["tags"][-1] == "scikit-learn" and "pytorch" not in artifact["tags"]
    assert artifact["authors"] == [
        {"type": "Person", "full_name": ODD_AUTHOR, "email": "zoe@example.org",
         "affiliation": "Univ. of Ŀ"}
    ]
    assert artifact["environment_setup"] == [{"type": "jupyterhub", "arguments": "{}"}]


def test_every_reference_resolves_to_an_entity(pytorch_project: Path) -> None:
    """A flattened JSON-LD graph: each {"@id"} the root points at is an entity with a @type."""
    document = json.loads((pytorch_project / "trovi.json").read_text(encoding="utf-8"))
    entities = {e["@id"]: e for e in document["@graph"]}
    assert len(entities) == len(document["@graph"]), "duplicate @id"
    assert all("@type" in e for e in entities.values())
    root = entities["./"]
    for key in ("author", "actionApplication"):
        for ref in root[key]:
            assert set(ref) == {"@id"} and ref["@id"] in entities, (key, ref)
    assert entities["#author"]["@type"] == "Person"
    assert entities["#chameleon-jupyterhub"]["@type"] == "SoftwareApplication"
