"""Hostile and broken appliance definitions (issue 14 §6): every one is refused by the loader with
one line ``FILE: field.path: reason``, bounded in memory, before anything is built or packaged."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.appliance import (
    PIPELINE_VARIABLES,
    YAML_LIMITS,
    Appliance,
    Base,
    BaseKind,
    build_order,
    find_appliance,
    from_dict,
    load_all,
    load_appliance,
)
from pipeline.errors import ConfigError
from pipeline.formats.ovf import DiskRef, HardwareProfile, build_descriptor, parse_descriptor
from pipeline.package.verify import descriptor_facts
from pipeline.schema import text_problem

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "packer_templates" / "debian-12" / "appliance.yaml").read_text()
AFTER = len(REFERENCE.splitlines()) + 1  # the line number of text appended to REFERENCE
CORES_MIN = REFERENCE.splitlines().index("  cores_min: 1") + 1  # the line of hardware.cores_min


def project(tmp_path: Path, text: str | bytes, name: str = "debian-12") -> Path:
    """``tmp_path/templates/NAME`` holding ``text`` as its definition, the template and one script;
    ``tmp_path/provisioners`` holds the shared scripts."""
    shared = tmp_path / "provisioners"
    shared.mkdir(parents=True, exist_ok=True)
    for script in ("upgrade.sh", "cloud-init.sh", "seal.sh"):
        (shared / script).write_text("#!/bin/sh\n")
    d = tmp_path / "templates" / name
    d.mkdir(parents=True)
    (d / "appliance.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    (d / f"{name}.pkr.hcl").write_text("# template\n")
    return d


def problems(directory: Path) -> list[str]:
    """The problems ``load_appliance`` reports, each checked to be one line naming the file."""
    with pytest.raises(ConfigError) as err:
        load_appliance(directory, directory.parent.parent / "provisioners")
    definition = str(directory / "appliance.yaml")
    for p in err.value.problems:
        assert "\n" not in p and p.startswith(definition), p
    return [p[len(definition) :] for p in err.value.problems]


def edited(old: str, new: str) -> str:
    assert old in REFERENCE
    return REFERENCE.replace(old, new, 1)


TITLE = "title: Debian 12 (bookworm) baseline"


def test_reference_definition_loads(tmp_path: Path) -> None:
    a = load_appliance(project(tmp_path, REFERENCE), tmp_path / "provisioners")
    assert a.title == "Debian 12 (bookworm) baseline" and a.variables == {}


# --- YAML: aliases, tags, duplicates, size, depth -------------------------------------------------

BOMB = "".join(
    [
        'variables:\n  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(f"  {c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    d = project(tmp_path, REFERENCE + BOMB)
    tracemalloc.start()
    try:
        found = problems(d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # expanded, it would be 9**9 (387 million) strings; refused at the anchors, it stays small
    assert peak < 8 * 2**20
    assert found[0] == f": variables.a: anchors (&a) are not allowed (line {AFTER + 1})"
    assert found[8] == f": variables.i: anchors (&i) are not allowed (line {AFTER + 9})"
    assert len(found) == 9


def test_an_alias_to_an_anchor_is_refused(tmp_path: Path) -> None:
    text = edited("vendor: vmi-pipeline community", "vendor: &v vmi-pipeline community")
    text = text.replace("  name: vmi-pipeline maintainers", "  name: *v")
    assert problems(project(tmp_path, text)) == [
        ": vendor: anchors (&v) are not allowed (line 9)",
        ": maintainer.name: aliases (*v) are not allowed (line 12)",
    ]


NOT_PLAIN = "is not allowed: only plain text, numbers, true/false, lists and mappings"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("!!binary aGVsbG8=", f"the tag !!binary {NOT_PLAIN}"),
        ("!!python/object/apply:os.system [echo]", f"the tag !!python/object/apply:os.system {NOT_PLAIN}"),
        ("!!python/name:os.system", f"the tag !!python/name:os.system {NOT_PLAIN}"),
        ("!!set {a: null}", f"the tag !!set {NOT_PLAIN}"),
        ("!!omap [a: 1]", f"the tag !!omap {NOT_PLAIN}"),
        ("!local thing", f"the tag !local {NOT_PLAIN}"),
        ("!!timestamp 2024-01-01", "'2024-01-01' reads as a date: write it in quotes"),
        ("2024-01-01 10:00:00", "'2024-01-01 10:00:00' reads as a date: write it in quotes"),
        (".nan", "'.nan': only finite numbers are allowed"),
        ("-.inf", "'-.inf': only finite numbers are allowed"),
        ("1.0e+400", "'1.0e+400': only finite numbers are allowed"),
        ("9" * 5000, f"a number longer than {YAML_LIMITS.max_number_chars} characters"),
        ("!!int abc", "'abc' is not a valid !!int"),
    ],
)
def test_only_json_values_are_read(tmp_path: Path, value: str, reason: str) -> None:
    assert problems(project(tmp_path, edited(TITLE, f"title: {value}"))) == [f": title: {reason} (line 4)"]


def test_duplicate_keys_are_refused_at_every_level(tmp_path: Path) -> None:
    text = edited("  cores_min: 1\n", "  cores_min: 1\n  cores_min: 64\n") + "title: second\n"
    assert problems(project(tmp_path, text)) == [
        f": hardware.cores_min: is set twice (lines {CORES_MIN} and {CORES_MIN + 1})",
        f": title: is set twice (lines 4 and {AFTER + 1})",
    ]


def test_keys_must_be_text(tmp_path: Path) -> None:
    text = REFERENCE + "? [a, b]\n: 1\n1: one\nnull: x\n<<: {vendor: x}\n"
    assert problems(project(tmp_path, text)) == [
        f": (top level): keys must be plain text (no lists, mappings, anchors, aliases) (line {AFTER})",
        f": (top level): the key '1' (!!int) not allowed: keys must be text (quote it) (line {AFTER + 2})",
        f": (top level): the key 'null' (!!null) not allowed: keys must be text (quote it) (line {AFTER + 3})",
        f": (top level): merge keys (<<) not allowed: keys must be text (quote it) (line {AFTER + 4})",
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", ": (top level): must be a mapping of fields"),
        ("- a\n- b\n", ": (top level): must be a mapping of fields"),
        ("just text\n", ": (top level): must be a mapping of fields"),
        (REFERENCE + "---\nname: other\n", f": (top level): more than one YAML document (---) (line {AFTER})"),
        (
            REFERENCE + "x: " + "[" * 9 + "]" * 9 + "\n",
            f": x.0.0.0.0.0.0.0: nested deeper than 8 levels (line {AFTER})",
        ),
        (b"name: caf\xe9\n", ": (top level): not UTF-8 text (byte 0xe9 at offset 9)"),
        (REFERENCE + "#" * YAML_LIMITS.max_bytes, f": (top level): larger than {YAML_LIMITS.max_bytes} bytes"),
        (edited(TITLE, "title: Debian\x07"), ":4:14: not valid YAML: control characters are not allowed (U+0007)"),
        ("a: " + "[" * 5000, ":1:1003: not valid YAML: exceeded maximum nesting depth"),
    ],
    ids=["empty", "list", "scalar", "two-documents", "deep", "latin1", "big", "raw-control", "libyaml-depth"],
)
def test_documents_that_are_not_one_small_mapping(tmp_path: Path, text: str | bytes, reason: str) -> None:
    assert problems(project(tmp_path, text)) == [reason]


def test_a_definition_that_is_not_a_regular_file(tmp_path: Path) -> None:
    d = project(tmp_path, REFERENCE)
    (d / "appliance.yaml").unlink()
    os.mkfifo(d / "appliance.yaml")  # a reader that opened it would wait forever
    with pytest.raises(ConfigError, match=r"appliance.yaml: no appliance definition here"):
        load_appliance(d)


# --- provisioners and template stay inside their folders -----------------------------------------

RELATIVE = (
    "must be a relative path to a .sh file, optionally in another appliance's folder (../NAME/...);"
    " no leading /, no other .., no hidden names"
)


def with_provisioners(*names: str) -> str:
    return edited("provisioners: [upgrade.sh, cloud-init.sh, seal.sh]", f"provisioners: [{', '.join(names)}]")


def test_provisioner_paths_that_leave_their_folder(tmp_path: Path) -> None:
    text = with_provisioners("/etc/profile.sh", "../../x.sh", "sub/../../x.sh", ".hidden.sh", "upgrade.sh")
    assert problems(project(tmp_path, text)) == [
        f": provisioners.0: '/etc/profile.sh' {RELATIVE}",
        f": provisioners.1: '../../x.sh' {RELATIVE}",
        f": provisioners.2: 'sub/../../x.sh' {RELATIVE}",
        f": provisioners.3: '.hidden.sh' {RELATIVE}",
    ]


def test_provisioner_symlinks_that_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside.sh"
    outside.write_text("#!/bin/sh\ncat /etc/shadow\n")
    d = project(tmp_path, with_provisioners("own.sh", "shared.sh", "dangling.sh", "folder.sh", "missing.sh"))
    (d / "own.sh").symlink_to(outside)
    (tmp_path / "provisioners" / "shared.sh").symlink_to(outside)
    (d / "dangling.sh").symlink_to(tmp_path / "nowhere.sh")
    (tmp_path / "provisioners" / "folder.sh").mkdir()
    inside = f"outside {d.parent} and {tmp_path / 'provisioners'}"
    assert problems(d) == [
        f": provisioners.0: own.sh resolves to {outside}, {inside}",
        f": provisioners.1: shared.sh resolves to {outside}, {inside}",
        ": provisioners.2: dangling.sh is a dangling symlink",
        ": provisioners.3: folder.sh is not a regular file",
        f": provisioners.4: missing.sh not found in {d} or {tmp_path / 'provisioners'}",
    ]


def test_symlinks_that_stay_inside_are_fine(tmp_path: Path) -> None:
    d = project(tmp_path, with_provisioners("mine.sh", "sub/upgrade.sh"))
    (d / "mine.sh").symlink_to(tmp_path / "provisioners" / "seal.sh")
    (d / "sub").mkdir()
    (d / "sub" / "upgrade.sh").write_text("#!/bin/sh\n")
    a = load_appliance(d, tmp_path / "provisioners")
    assert a.provisioner_paths(tmp_path / "provisioners") == [d / "mine.sh", d / "sub" / "upgrade.sh"]


def test_a_sibling_appliances_script(tmp_path: Path) -> None:
    """A layered appliance may run its base's own script as ``../BASE/x.sh`` (what new-appliance
    writes), but only that one step up, into an appliance folder."""
    base = project(tmp_path, REFERENCE)
    (base / "seal.sh").write_text("#!/bin/sh\n")
    (tmp_path / "outside.sh").write_text("#!/bin/sh\n")
    (base / "leak.sh").symlink_to(tmp_path / "outside.sh")
    text = REFERENCE.replace("name: debian-12", "name: layer").replace("debian-12.pkr.hcl", "layer.pkr.hcl")
    names = ["../debian-12/seal.sh", "../debian-12/leak.sh", "../debian-12/../../outside.sh", "../Debian/seal.sh"]
    d = project(tmp_path, text.replace("[upgrade.sh, cloud-init.sh, seal.sh]", f"[{', '.join(names)}]"), "layer")
    assert problems(d) == [
        f": provisioners.2: '../debian-12/../../outside.sh' {RELATIVE}",
        f": provisioners.3: '../Debian/seal.sh' {RELATIVE}",
        f": provisioners.1: ../debian-12/leak.sh resolves to {tmp_path / 'outside.sh'},"
        f" outside {tmp_path / 'templates'} and {tmp_path / 'provisioners'}",
    ]
    good = text.replace("[upgrade.sh, cloud-init.sh, seal.sh]", "[upgrade.sh, ../debian-12/seal.sh]")
    (d / "appliance.yaml").write_text(good)
    a = load_appliance(d, tmp_path / "provisioners")
    paths = a.provisioner_paths(tmp_path / "provisioners")
    assert paths == [tmp_path / "provisioners/upgrade.sh", d / "../debian-12/seal.sh"]


def test_template_symlink_that_escapes(tmp_path: Path) -> None:
    d = project(tmp_path, REFERENCE + "template: debian-12.pkr.hcl\n")  # a template of its own
    (d / "debian-12.pkr.hcl").unlink()
    (tmp_path / "elsewhere.pkr.hcl").write_text("# not ours\n")
    (d / "debian-12.pkr.hcl").symlink_to(tmp_path / "elsewhere.pkr.hcl")
    assert problems(d) == [f": template: debian-12.pkr.hcl resolves to {tmp_path / 'elsewhere.pkr.hcl'}, outside {d}"]


def test_appliance_folder_symlinked_from_outside(tmp_path: Path) -> None:
    real = project(tmp_path / "elsewhere", REFERENCE)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "debian-12").symlink_to(real)
    with pytest.raises(ConfigError) as err:
        load_all(tmp_path / "templates")
    definition = tmp_path / "templates" / "debian-12" / "appliance.yaml"
    reason = f"resolves to {real / 'appliance.yaml'}, outside {tmp_path / 'templates'}"
    assert err.value.problems == [f"{definition}: (top level): {reason}"]


@pytest.mark.parametrize("name", ["../debian-12", "/etc", "Debian-12", "debian-12/../debian-12", "a\nb"])
def test_find_appliance_takes_only_names(tmp_path: Path, name: str) -> None:
    project(tmp_path, REFERENCE)
    with pytest.raises(ConfigError) as err:
        find_appliance(tmp_path / "templates", name)
    assert err.value.problems == [f"{tmp_path / 'templates'}: no appliance named {name!r}"]
    assert err.value.hint == "known appliances: debian-12"


# --- variables --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PIPELINE_VARIABLES))
def test_pipeline_variables_cannot_be_overridden(tmp_path: Path, name: str) -> None:
    found = problems(project(tmp_path, REFERENCE + f"variables:\n  {name}: x\n"))
    assert len(found) == 1 and found[0].startswith(f": variables.{name}: is a pipeline variable and cannot be set here")


def test_memory_and_cpus_say_where_they_come_from(tmp_path: Path) -> None:
    assert problems(project(tmp_path, REFERENCE + "variables: {memory: 4096, cpus: 4}\n")) == [
        ": variables.memory: is a pipeline variable and cannot be set here"
        " (the build VM's memory follows hardware.ram_min_mb)",
        ": variables.cpus: is a pipeline variable and cannot be set here (the build VM's CPUs follow the build host)",
    ]


def test_variable_names_and_values_are_shaped(tmp_path: Path) -> None:
    text = REFERENCE + (
        "variables:\n"
        "  locale: en_GB.UTF-8\n"
        "  disk_extra_gb: 2\n"
        "  headless: true\n"
        "  x y: 1\n"
        "  9lives: 1\n"
        "  listed: [a]\n"
        "  empty: null\n"
        f"  long: {'x' * 1025}\n"
        '  bell: "ring\\a"\n'
        f"  {'v' * 65}: 1\n"
    )
    assert problems(project(tmp_path, text)) == [
        ": variables.bell: contains the character U+0007 at position 4",
        ": variables.\"x y\": 'x y' a variable name must be letters, digits and _ (not starting with a digit)",
        ": variables.9lives: '9lives' a variable name must be letters, digits and _ (not starting with a digit)",
        f': variables."{"v" * 40}...": must be at most 64 characters (has 65)',
        ": variables.empty: must be of type ['string', 'number', 'boolean']",
        ": variables.listed: must be of type ['string', 'number', 'boolean']",
        ": variables.long: must be at most 1024 characters (has 1025)",
    ]


def test_good_variables_load(tmp_path: Path) -> None:
    text = REFERENCE + "variables: {locale: en_GB.UTF-8, disk_extra_gb: 2, headless: true, ratio: 0.5}\n"
    a = load_appliance(project(tmp_path, text), tmp_path / "provisioners")
    assert a.variables == {"locale": "en_GB.UTF-8", "disk_extra_gb": 2, "headless": True, "ratio": 0.5}


def test_every_variable_the_pipeline_sets_is_reserved(tmp_path: Path, reference_settings: Any) -> None:
    """If the build starts passing a new variable to templates, appliances must not be able to set it."""
    from pipeline.builder import template_variables

    a = load_appliance(ROOT / "packer_templates" / "debian-12", ROOT / "provisioners")
    given = template_variables(a, reference_settings, tmp_path, tmp_path, tmp_path, "x", tmp_path, tmp_path)
    assert set(given) <= PIPELINE_VARIABLES


# --- text: control characters, XML-unsafe characters, lengths -----------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("title", "Debian\x1b[31m", "contains the character U+001B at position 6"),
        ("title", "two\nlines", "contains the character U+000A at position 3; only multi-line fields may span lines"),
        ("title", "tab\there", "contains the character U+0009 at position 3"),
        ("title", "evil\u202ecod.exe", "contains the character U+202E at position 4"),
        ("title", "x\ufffe", "contains the character U+FFFE at position 1"),
        ("title", "x\U0010ffff", "contains the character U+10FFFF at position 1"),
        ("title", "x\x85", "contains the character U+0085 at position 1"),
        ("title", "x\u2028y", "contains the character U+2028 at position 1"),
        ("vendor", "v\x7f", "contains the character U+007F at position 1"),
        ("maintainer.name", "\x00", "contains the character U+0000 at position 0"),
        ("os.name", "Debian\r", "contains the character U+000D at position 6"),
        ("description", "a\rb", "contains the character U+000D at position 1"),
        ("description", "a\x0cb", "contains the character U+000C at position 1"),
    ],
)
def test_control_characters_are_refused_in_every_text_field(
    tmp_path: Path, field: str, value: str, reason: str
) -> None:
    data = yaml.safe_load(REFERENCE)
    node = data
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    # written with escapes (as an editor would), read back by the real loader
    assert problems(project(tmp_path, yaml.safe_dump(data, allow_unicode=False))) == [f": {field}: {reason}"]


def test_lone_surrogates_are_refused_without_a_crash(tmp_path: Path) -> None:
    """YAML cannot carry them (libyaml refuses the escape) but a dict can: the schema's Rust validator
    must not crash on them either."""
    data = yaml.safe_load(REFERENCE) | {"title": "x\ud800", "vendor": "\udfff"}
    d = project(tmp_path, REFERENCE)
    with pytest.raises(ConfigError) as err:
        from_dict(data, d, "def.yaml")
    assert err.value.problems == [
        "def.yaml: title: contains a lone surrogate U+D800 at position 1",
        "def.yaml: vendor: contains a lone surrogate U+DFFF at position 0",
    ]


def test_control_character_in_a_field_name(tmp_path: Path) -> None:
    text = REFERENCE + '"ti\\x07tle": x\n'
    assert problems(project(tmp_path, text)) == [
        ': "ti\\u0007tle": the field name contains the character U+0007 at position 2',
        ': "ti\\u0007tle": is not a known field',
    ]


def test_description_may_span_lines(tmp_path: Path) -> None:
    text = edited("description: >", "description: |") + ""
    a = load_appliance(project(tmp_path, text), tmp_path / "provisioners")
    assert a.description.count("\n") == 2


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("title", "t" * 201, "must be at most 200 characters (has 201)"),
        ("description", "d" * 5001, "must be at most 5000 characters (has 5001)"),
        ("vendor", "v" * 201, "must be at most 200 characters (has 201)"),
        ("title", "   ", "must not be blank"),
        ("description", " \n ", "must not be blank"),
        ("maintainer.name", " ", "must not be blank"),
        ("os.name", "\u3000", "must not be blank"),
        ("homepage", "https://x.org/" + "p" * 2000, "must be at most 2000 characters (has 2014)"),
    ],
)
def test_lengths_are_capped(tmp_path: Path, field: str, value: str, reason: str) -> None:
    data = yaml.safe_load(REFERENCE)
    section, _, key = field.rpartition(".")
    (data[section] if section else data)[key] = value
    assert problems(project(tmp_path, yaml.safe_dump(data))) == [f": {field}: {reason}"]


def worst_case_appliance(directory: Path) -> Appliance:
    """An accepted definition with every text field at its longest, in the characters that grow the
    most in XML (``&`` -> ``&amp;``) or in UTF-8 (4 bytes)."""
    heavy = "&<>\"'\U0001f600"
    data = yaml.safe_load(REFERENCE)
    data |= {
        "title": (heavy * 200)[:200],
        "description": (heavy * 5000)[:4999] + "x",
        "vendor": (heavy * 200)[:200],
        "homepage": "https://example.org/?" + "&" * 1979,
    }
    data["os"] |= {"name": (heavy * 64)[:64], "version": "9" * 32}
    data["maintainer"] = {"name": (heavy * 200)[:200], "email": "a@b.c"}
    data["hardware"] = {"cores_min": 256, "ram_min_mb": 1048576, "disk_gb": 2048}
    return from_dict(data, directory)


@pytest.mark.parametrize("profile", list(HardwareProfile))
def test_the_largest_accepted_definition_makes_a_descriptor_verify_ova_accepts(
    tmp_path: Path, profile: HardwareProfile
) -> None:
    a = worst_case_appliance(project(tmp_path, REFERENCE))
    data = build_descriptor(a, "2026.11.22", DiskRef("debian-12-2026.11.22-disk1.vmdk", 1024, 2**30), profile)
    assert len(data) < 64 * 1024  # verify-ova reads descriptors up to 1 MiB
    tree = parse_descriptor(data)
    assert descriptor_facts(tree).problems == []
    assert tree.findtext(".//{*}Annotation") == a.description
    assert tree.findtext(".//{*}ProductSection/{*}Product") == a.title


def test_all_problems_at_once(tmp_path: Path) -> None:
    text = (
        edited(TITLE, "title: !!binary aGVsbG8=")
        .replace("cores_min: 1", "cores_min: 0")
        .replace("[upgrade.sh, cloud-init.sh, seal.sh]", "[/etc/rc.sh, seal.sh]")
        .replace("mirror", "mirror")
        + "variables: {memory: 1}\nvendor: again\n"
        + "homepage: file:///etc/passwd\n"
    )
    assert problems(project(tmp_path, text)) == [
        f": title: the tag !!binary {NOT_PLAIN} (line 4)",
        f": vendor: is set twice (lines 9 and {AFTER + 1})",
        f": homepage: is set twice (lines 10 and {AFTER + 2})",
        ": hardware.cores_min: must be >= 1",
        f": provisioners.0: '/etc/rc.sh' {RELATIVE}",
        ": variables.memory: is a pipeline variable and cannot be set here"
        " (the build VM's memory follows hardware.ram_min_mb)",
    ]


# --- names, URLs, checksums ----------------------------------------------------------------------------

NAME_RULE = "must be lower-case letters and digits, with single dots or dashes between them"
URL_RULE = "must be an http:// or https:// URL of printable ASCII, with no user name or password in it"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", "a..b", f"'a..b' {NAME_RULE}"),
        ("name", "a-", f"'a-' {NAME_RULE}"),
        ("base.appliance", "-x", f"'-x' {NAME_RULE}"),
        ("base.appliance", "x" * 64, "must be at most 63 characters (has 64)"),
        ("homepage", "file:///etc/passwd", f"'file:///etc/passwd' {URL_RULE}"),
        ("homepage", "https://user:secret@example.org/", f"'https://user:secret@example.org/' {URL_RULE}"),
        ("homepage", "https://example.org:99999/", "'https://example.org:99999/': Port out of range 0-65535"),
        ("homepage", "https://exa mple.org/", f"'https://exa mple.org/' {URL_RULE}"),
        ("homepage", "https://exämple.org/", f"'https://exämple.org/' {URL_RULE}"),
        ("homepage", "javascript:alert(1)", f"'javascript:alert(1)' {URL_RULE}"),
        ("base.image.url", "file:///etc/shadow", f"'file:///etc/shadow' {URL_RULE}"),
        ("base.image.checksum", "sha256:" + "A" * 64, "does not match"),
        ("base.image.checksum", "sha512:" + "a" * 64, "does not match"),
        ("vos", ["vo.example.org", "vo.example.org"], "has duplicate items"),
        ("rebuild.schedule", "daily; rm -rf /", "'daily; rm -rf /' does not match ^[a-z0-9 */,-]+$"),
        ("hardware.cores_min", 2.0, "must be a whole number (no decimal point)"),
        ("hardware.disk_gb", True, "must be of type integer"),
        ("maintainer.email", "a@" + "." * 3000, "must be at most 254 characters (has 3002)"),
    ],
)
def test_names_urls_and_checksums(tmp_path: Path, field: str, value: Any, reason: str) -> None:
    data = yaml.safe_load(REFERENCE)
    if field.startswith("base.image"):
        data["base"] = {"image": {"url": "https://example.org/x.qcow2", "checksum": "sha256:" + "0" * 64}}
    if field == "base.appliance":
        data["base"] = {"appliance": "x"}
    node = data
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    found = problems(project(tmp_path, yaml.safe_dump(data, allow_unicode=True)))
    assert any(p.startswith(f": {field}: ") and reason in p for p in found), found
    assert all(p.startswith(f": {field}: ") for p in found), found


def test_text_rule_matches_xml() -> None:
    """What text_problem lets through, lxml can write and read back (spot check; fuzzed elsewhere)."""
    assert text_problem("Ünïcødé 日本語 \U0001f600 &<>") is None
    assert text_problem("line\nline\ttab", multiline=True) is None


def test_validate_reports_every_broken_appliance_of_a_project(tmp_path: Path) -> None:
    """What `invoke validate` loads first (load_all): the project's three appliances, each broken
    another way, give one line each, all together."""
    templates = tmp_path / "packer_templates"
    shutil.copytree(ROOT / "packer_templates", templates)
    shutil.copytree(ROOT / "provisioners", tmp_path / "provisioners")
    debian, alma, ubuntu = (templates / n / "appliance.yaml" for n in ("debian-12", "almalinux-9", "ubuntu-24.04"))
    debian.write_text(debian.read_text() + BOMB)
    alma.write_text(alma.read_text().replace("title: AlmaLinux 9 baseline", 'title: "AlmaLinux\\x1b[2J 9"'))
    ubuntu.write_text(ubuntu.read_text() + "variables: {ssh_private_key_file: /root/.ssh/id_rsa}\n")
    with pytest.raises(ConfigError) as err:
        load_all(templates, tmp_path / "provisioners")
    assert err.value.problems[0] == f"{alma}: title: contains the character U+001B at position 9"
    assert err.value.problems[1] == f"{debian}: variables.a: anchors (&a) are not allowed (line {AFTER + 1})"
    assert err.value.problems[-1] == (
        f"{ubuntu}: variables.ssh_private_key_file: is a pipeline variable and cannot be set here"
        " (the pipeline sets it for every build)"
    )
    assert len(err.value.problems) == 11


def test_a_thousand_layers_are_ordered_without_recursion(tmp_path: Path) -> None:
    d = project(tmp_path, REFERENCE)
    base = load_appliance(d)

    def on(parent: str) -> Base:
        return Base(BaseKind.APPLIANCE, appliance=parent)

    layers = [base]
    layers += [dataclasses.replace(base, name=f"l{i}", base=on(f"l{i - 1}" if i else base.name)) for i in range(3000)]
    order = build_order(reversed(layers))
    assert [a.name for a in order] == [a.name for a in layers]
    looped = dataclasses.replace(base, base=on("l2999"))
    with pytest.raises(ConfigError) as err:
        build_order([looped, *layers[1:]])
    cycle = "debian-12 -> l2999 -> l2998 -> ... (2996 more) -> l1 -> l0 -> debian-12"
    assert err.value.problems == [f"{base.definition_path}: base.appliance: layering cycle {cycle}"]


def test_the_worst_case_round_trips_through_yaml(tmp_path: Path) -> None:
    """What PyYAML writes for the heaviest accepted text, the strict reader reads back unchanged."""
    d = project(tmp_path, REFERENCE)
    a = worst_case_appliance(d)
    for allow_unicode in (True, False):
        (d / "appliance.yaml").write_text(yaml.safe_dump(a.to_dict(), allow_unicode=allow_unicode))
        assert load_appliance(d, tmp_path / "provisioners") == a
