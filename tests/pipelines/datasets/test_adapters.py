"""Dataset adapters on tiny fixtures written in each dataset's exact real format, quirks included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.datasets import (
    AnnotationError,
    Item,
    charades,
    get_adapter,
    imagenet,
    kinetics,
    normalise_split,
    ssv2,
)


def write(path: Path, text: str | bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


# ------------------------------------------------------------------------------------------------ common
def test_get_adapter_and_split_names():
    assert get_adapter("kinetics") is kinetics
    assert get_adapter("ssv2") is ssv2
    with pytest.raises(ValueError, match=r"unknown dataset format 'kinetics700'.*kinetics, charades"):
        get_adapter("kinetics700")
    assert [normalise_split(s) for s in ("train", "validate", "val", "Validation", "test")] == [
        "train",
        "val",
        "val",
        "val",
        "test",
    ]
    with pytest.raises(ValueError, match=r"row 3: unknown split 'holdout'"):
        normalise_split("holdout", "row 3")


def test_params_splits_are_normalised_as_the_adapters_do(tmp_path: Path):
    """``datasets.<ds>.splits`` goes through the adapters' table: ``validation`` is ``val``; an unknown
    name or one split named twice is refused, naming the key (it would give an empty shard folder)."""
    from tubevit.config.base import ConfigError
    from tubevit.config.data import DatasetConfig

    cfg = DatasetConfig(format="ssv2", splits=("Train", "validation"))
    assert cfg.splits == ("train", "val") == tuple(normalise_split(s) for s in ("Train", "validation"))
    with pytest.raises(ConfigError) as exc:
        DatasetConfig(format="kinetics", splits=("train", "dev"))
    assert (
        str(exc.value)
        == "splits[1]: unknown split 'dev'; known: test, train, training, val, valid, validate, validation"
    )
    with pytest.raises(ConfigError, match=r"^splits\[1\]: 'validate' names split 'val' twice$"):
        DatasetConfig(format="kinetics", splits=("val", "validate"))

    import yaml

    from pipelines.params import load_params

    data = yaml.safe_load((Path(__file__).parents[2] / "fixtures" / "params-micro.yaml").read_text())
    data["datasets"]["kinetics"]["splits"] = ["train", "validation", "holdout"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"^datasets\.kinetics\.splits\[2\]: unknown split 'holdout'"):
        load_params(params)
    data["datasets"]["kinetics"]["splits"] = ["train", "validation"]
    params.write_text(yaml.safe_dump(data))
    assert load_params(params).dataset("kinetics").splits == ("train", "val")


def test_item_is_frozen():
    item = Item(id="a", split="train", source="a.mp4", label=1, labels=(1,))
    with pytest.raises(AttributeError):
        item.label = 2


# ---------------------------------------------------------------------------------------------- kinetics
K700_TRAIN = """label,youtube_id,time_start,time_end,split
abseiling,-0Hy_ZGzUPo,0,10,train
"passing American football (in game)",_bc4SNs_Ojs,30,40,train
air drumming,ZZ-aLCRd3uA,3,13,train
"""
K700_VALIDATE = """label,youtube_id,time_start,time_end,split
abseiling,--xS-YNYLI8,14,24,validate
air drumming,_7xjmc1lNy8,120,130,validate
"""
K600_TEST = """youtube_id,time_start,time_end,split
-a1b2c3d4e5,5,15,test
"""


@pytest.fixture
def kinetics_root(tmp_path: Path) -> Path:
    root = tmp_path / "kinetics"
    write(root / "kinetics700_2020" / "train.csv", K700_TRAIN)
    write(root / "kinetics700_2020" / "validate.csv", K700_VALIDATE)
    write(root / "kinetics700_2020" / "test.csv", K600_TEST)
    write(root / "train" / "-0Hy_ZGzUPo_000000_000010.mp4")  # trimmed (CVDF) name
    write(root / "train" / "abseiling" / "_bc4SNs_Ojs.mp4")  # full-length (yt-dlp) name, in a label folder
    write(root / "val" / "--xS-YNYLI8_000014_000024.mp4")
    write(root / "val" / ".--xS-YNYLI8_000014_000024.mp4.tmp-0123")  # a temporary: ignored
    write(root / "summary.json", "{}")
    return root


def test_kinetics_reads_train_with_real_quirks(kinetics_root: Path):
    names = kinetics.class_names(kinetics_root)
    assert names == ["abseiling", "air drumming", "passing American football (in game)"]
    items = kinetics.read_items(kinetics_root, "train")
    assert [i.id for i in items] == [
        "-0Hy_ZGzUPo_000000_000010",
        "_bc4SNs_Ojs_000030_000040",
        "ZZ-aLCRd3uA_000003_000013",
    ]
    a, b, c = items
    assert (a.split, a.label, a.labels, a.start, a.end) == ("train", 0, (0,), 0.0, 10.0)
    assert a.source == "train/-0Hy_ZGzUPo_000000_000010.mp4"
    assert a.extra == {"youtube_id": "-0Hy_ZGzUPo", "trimmed_name": True, "found": True}
    assert (b.label, b.source, b.start, b.end) == (2, "train/abseiling/_bc4SNs_Ojs.mp4", 30.0, 40.0)
    assert b.extra["trimmed_name"] is False
    assert c.source == "https://www.youtube.com/watch?v=ZZ-aLCRd3uA"
    assert c.extra == {"youtube_id": "ZZ-aLCRd3uA", "trimmed_name": None, "found": False}


def test_kinetics_700_validate_is_val_and_test_has_no_label(kinetics_root: Path):
    val = kinetics.read_items(kinetics_root, "val")
    assert [(i.id, i.split, i.label) for i in val] == [
        ("--xS-YNYLI8_000014_000024", "val", 0),
        ("_7xjmc1lNy8_000120_000130", "val", 1),
    ]
    assert val[0].source == "val/--xS-YNYLI8_000014_000024.mp4"
    assert kinetics.read_items(kinetics_root, "validate") == val
    test = kinetics.read_items(kinetics_root, "test")
    assert [(i.id, i.label, i.labels) for i in test] == [("-a1b2c3d4e5_000005_000015", None, ())]


def test_kinetics_400_val_csv_with_is_cc(tmp_path: Path):
    write(
        tmp_path / "annotations" / "train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\nabseiling,---QUuC4vJs,84,94,train,0\n",
    )
    write(
        tmp_path / "annotations" / "val.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\nabseiling,--07WQ2iBlw,1,11,val,0\n",
    )
    (item,) = kinetics.read_items(tmp_path, "val")
    assert (item.id, item.label, item.split) == ("--07WQ2iBlw_000001_000011", 0, "val")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("abseiling,-x,0,10", r"train.csv:3: expected 5 columns, got 4"),
        ("abseiling,-x,zero,10,train", r"train.csv:3: time_start is not a number: 'zero'"),
        ("abseiling,-x,10,10,train", r"train.csv:3: time_end 10 is not after time_start 10"),
        ("abseiling,,0,10,train", r"train.csv:3: empty youtube_id"),
        ("abseiling,-x,0,10,holdout", r"train.csv:3: unknown split 'holdout'"),
        ("abseiling,-0Hy_ZGzUPo,0,10,train", r"train.csv:3: duplicate clip -0Hy_ZGzUPo_000000_000010"),
        # a YouTube id is 11 characters of [A-Za-z0-9_-]: never a path or a URL
        ("abseiling,../../etc/x,0,10,train", r"train.csv:3: youtube_id '../../etc/x' is not 11 characters"),
        ("abseiling,a/b/c/d/e/f,0,10,train", r"train.csv:3: youtube_id 'a/b/c/d/e/f' is not 11 characters"),
        ("abseiling,-0Hy_ZGzUPo_,0,10,train", r"train.csv:3: youtube_id '-0Hy_ZGzUPo_' is not 11 characters"),
        ("abseiling,short,0,10,train", r"train.csv:3: youtube_id 'short' is not 11 characters"),
    ],
)
def test_kinetics_malformed_rows_name_file_and_line(tmp_path: Path, row: str, reason: str):
    write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split\nabseiling,-0Hy_ZGzUPo,0,10,train\n" + row + "\n",
    )
    with pytest.raises(AnnotationError, match=reason):
        kinetics.read_items(tmp_path, "train")


def test_kinetics_missing_annotation_names_split_and_folder(tmp_path: Path):
    write(tmp_path / "train.csv", K700_TRAIN)
    with pytest.raises(AnnotationError, match=r"no annotation CSV for split 'val'") as err:
        kinetics.read_items(tmp_path, "val")
    assert str(tmp_path) in str(err.value)
    with pytest.raises(AnnotationError, match=r"header lacks column\(s\) time_end"):
        write(tmp_path / "train.csv", "label,youtube_id,time_start,split\na,b,1,train\n")
        kinetics.read_items(tmp_path, "train")


# ---------------------------------------------------------------------------------------------- charades
CHARADES_CLASSES_TXT = (
    "c000 Holding some clothes\nc001 Putting clothes somewhere\nc002 Taking some clothes from somewhere\n"
)
CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
CHARADES_TRAIN = CHARADES_HEADER + (
    '46GP8,HR43,Kitchen,6,7,Yes,"A person cooks on a stove, then holds clothes.",clothes;stove,'
    '"A person is cooking, holding clothes.","c002 11.90 21.20;c000 0.00 12.60",24.83\n'
    "N11GT,0KZ7,Stairs,6,7,Yes,A person walks up the stairs.,stairs,A person walks.,,15.04\n"
)
CHARADES_TEST = (
    CHARADES_HEADER
    + "YSKX3,6RE8,Bedroom,7,7,Yes,A person puts clothes away.,clothes,Puts.,c001 2.50 8.00,30.12\n"
)


@pytest.fixture
def charades_root(tmp_path: Path) -> Path:
    root = tmp_path / "charades"
    write(root / "Charades" / "Charades_v1_classes.txt", CHARADES_CLASSES_TXT)
    write(root / "Charades" / "Charades_v1_train.csv", CHARADES_TRAIN)
    write(root / "Charades" / "Charades_v1_test.csv", CHARADES_TEST)
    write(root / "Charades_v1_480" / "46GP8.mp4")
    write(root / "Charades_v1_480" / "YSKX3.mp4")
    return root


def test_charades_actions_and_videos_without_actions(charades_root: Path):
    assert charades.class_names(charades_root) == [
        "Holding some clothes",
        "Putting clothes somewhere",
        "Taking some clothes from somewhere",
    ]
    a, b = charades.read_items(charades_root, "train")
    assert (a.id, a.split, a.label, a.labels) == ("46GP8", "train", None, (0, 2))
    assert a.actions == ((2, 11.9, 21.2), (0, 0.0, 12.6))
    assert (a.start, a.end, a.source) == (None, None, "Charades_v1_480/46GP8.mp4")
    assert a.extra == {"length": 24.83, "found": True}
    assert (b.id, b.labels, b.actions) == ("N11GT", (), ())  # a video with no action
    assert b.extra == {"length": 15.04, "found": False}
    assert b.source == "Charades_v1_480/N11GT.mp4"


def test_charades_test_file_is_val(charades_root: Path):
    (item,) = charades.read_items(charades_root, "val")
    assert (item.id, item.split, item.labels, item.actions) == ("YSKX3", "val", (1,), ((1, 2.5, 8.0),))
    assert charades.read_items(charades_root, "test") == [item]


@pytest.mark.parametrize(
    ("actions", "reason"),
    [
        ("c157 1.00 2.00", r"Charades_v1_train.csv:2: unknown class 'c157'"),
        ("c000 1.00", r"Charades_v1_train.csv:2: action 'c000 1.00' is not 'cNNN start end'"),
        ("c000 5.00 2.00", r"Charades_v1_train.csv:2: action 'c000 5.00 2.00' needs 0 <= start <= end"),
        ("c000 a b", r"Charades_v1_train.csv:2: action 'c000 a b' has a non-numeric time"),
    ],
)
def test_charades_bad_actions(charades_root: Path, actions: str, reason: str):
    write(
        charades_root / "Charades" / "Charades_v1_train.csv",
        CHARADES_HEADER + f"AAAAA,S,K,1,1,Yes,s,o,d,{actions},10.0\n",
    )
    with pytest.raises(AnnotationError, match=reason):
        charades.read_items(charades_root, "train")


def test_charades_missing_files(tmp_path: Path):
    with pytest.raises(AnnotationError, match=r"Charades_v1_test.csv: annotation file not found"):
        charades.read_items(tmp_path, "val")
    write(tmp_path / "Charades_v1_classes.txt", "c000 Holding\nHolding clothes\n")
    with pytest.raises(AnnotationError, match=r"Charades_v1_classes.txt:2: expected 'cNNN <name>'"):
        charades.class_names(tmp_path)


# -------------------------------------------------------------------------------------------------- ssv2
SSV2_LABELS = {
    "Holding something next to something": "0",
    "Putting something on a surface": "1",
    "Pretending to pick something up": "2",
}
SSV2_TRAIN = [
    {
        "id": "78687",
        "label": "holding potato next to vicks vaporub bottle",
        "template": "Holding [something] next to [something]",
        "placeholders": ["potato", "vicks vaporub bottle"],
    },
    {
        "id": "42326",
        "label": "putting a cup on a surface",
        "template": "Putting [something] on a surface",
        "placeholders": ["a cup"],
    },
]
SSV2_VAL = [
    {
        "id": "74225",
        "label": "pretending to pick a pen up",
        "template": "Pretending to pick [something] up",
        "placeholders": ["a pen"],
    }
]


@pytest.fixture
def ssv2_root(tmp_path: Path) -> Path:
    root = tmp_path / "ssv2"
    write(root / "labels" / "something-something-v2-labels.json", json.dumps(SSV2_LABELS))
    write(root / "labels" / "something-something-v2-train.json", json.dumps(SSV2_TRAIN))
    write(root / "labels" / "something-something-v2-validation.json", json.dumps(SSV2_VAL))
    write(root / "labels" / "something-something-v2-test.json", json.dumps([{"id": "1420"}]))
    write(root / "20bn-something-something-v2" / "78687.webm")
    return root


def test_ssv2_templates_with_brackets_map_to_labels(ssv2_root: Path):
    assert ssv2.class_names(ssv2_root) == [
        "Holding something next to something",
        "Putting something on a surface",
        "Pretending to pick something up",
    ]
    a, b = ssv2.read_items(ssv2_root, "train")
    assert (a.id, a.split, a.label, a.labels, a.source) == (
        "78687",
        "train",
        0,
        (0,),
        "20bn-something-something-v2/78687.webm",
    )
    assert a.extra == {
        "template": "Holding [something] next to [something]",
        "text": "holding potato next to vicks vaporub bottle",
        "placeholders": ["potato", "vicks vaporub bottle"],
        "found": True,
    }
    assert (b.id, b.label, b.source, b.extra["found"]) == (
        "42326",
        1,
        "20bn-something-something-v2/42326.webm",
        False,
    )
    (v,) = ssv2.read_items(ssv2_root, "validation")
    assert (v.id, v.split, v.label) == ("74225", "val", 2)
    (t,) = ssv2.read_items(ssv2_root, "test")
    assert (t.id, t.label) == ("1420", None)


def test_ssv2_errors(ssv2_root: Path):
    bad = [
        *SSV2_TRAIN,
        {
            "id": "5",
            "label": "x",
            "template": "Spinning [something] that quickly stops spinning",
            "placeholders": [],
        },
    ]
    write(ssv2_root / "labels" / "something-something-v2-train.json", json.dumps(bad))
    with pytest.raises(
        AnnotationError,
        match=r"train.json:entry 2: id 5: unknown label 'Spinning something that quickly stops spinning'",
    ):
        ssv2.read_items(ssv2_root, "train")
    write(ssv2_root / "labels" / "something-something-v2-labels.json", json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(AnnotationError, match=r"labels.json: indices are not 0..1"):
        ssv2.class_names(ssv2_root)
    write(ssv2_root / "labels" / "something-something-v2-validation.json", "[{")
    with pytest.raises(AnnotationError, match=r"validation.json:1: not valid JSON"):
        ssv2.read_items(ssv2_root, "val")


# ---------------------------------------------------------------------------------------------- imagenet
def test_imagenet_synset_folders_and_flat_val(tmp_path: Path):
    write(
        tmp_path / "LOC_synset_mapping.txt",
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n",
    )
    write(tmp_path / "train" / "n01443537" / "n01443537_10007.JPEG")
    write(tmp_path / "train" / "n01440764" / "n01440764_10026.JPEG")
    write(tmp_path / "train" / "n01440764" / "n01440764_10027.JPEG")
    write(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    write(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG")
    write(
        tmp_path / "LOC_val_solution.csv",
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01443537 1 2 3 4\nILSVRC2012_val_00000002,n01440764 5 6 7 8 n01440764 1 1 2 2\n",
    )
    assert imagenet.class_names(tmp_path) == ["n01440764", "n01443537"]
    assert imagenet.synset_words(tmp_path)["n01440764"] == "tench, Tinca tinca"
    train = imagenet.read_items(tmp_path, "train")
    assert [(i.id, i.label, i.source) for i in train] == [
        ("n01440764_10026", 0, "train/n01440764/n01440764_10026.JPEG"),
        ("n01440764_10027", 0, "train/n01440764/n01440764_10027.JPEG"),
        ("n01443537_10007", 1, "train/n01443537/n01443537_10007.JPEG"),
    ]
    val = imagenet.read_items(tmp_path, "val")
    assert [(i.id, i.split, i.label, i.extra["synset"]) for i in val] == [
        ("ILSVRC2012_val_00000001", "val", 1, "n01443537"),
        ("ILSVRC2012_val_00000002", "val", 0, "n01440764"),
    ]


def test_imagenet_unknown_synset_and_missing_folder(tmp_path: Path):
    write(tmp_path / "LOC_synset_mapping.txt", "n01440764 tench\n")
    write(tmp_path / "train" / "n09999999" / "a.JPEG")
    with pytest.raises(
        AnnotationError, match=r"n09999999: unknown label: synset folder 'n09999999' is not in the class map"
    ):
        imagenet.read_items(tmp_path, "train")
    with pytest.raises(AnnotationError, match=r"no image folder for split 'val'"):
        imagenet.read_items(tmp_path, "val")
    write(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(AnnotationError, match=r"images directly in .* but no LOC_val_solution.csv"):
        imagenet.read_items(tmp_path, "val")


def test_code_line_files_name_the_bad_line_and_duplicates(tmp_path):
    from pipelines.datasets import get_adapter
    from pipelines.datasets.base import AnnotationError

    root = tmp_path / "charades"
    root.mkdir()
    (root / "Charades_v1_classes.txt").write_text(
        "c000 Holding some clothes\n\nc001 Putting clothes somewhere\n"
    )
    assert get_adapter("charades").class_names(root) == ["Holding some clothes", "Putting clothes somewhere"]
    (root / "Charades_v1_classes.txt").write_text("c000 Holding some clothes\nc000 Again\n")
    with pytest.raises(
        AnnotationError, match=r"Charades_v1_classes.txt:2: c000 occurs twice \(first on line 1\)"
    ):
        get_adapter("charades").class_names(root)
    (root / "Charades_v1_classes.txt").write_text("c000 Holding\nx01 Bad code\n")
    with pytest.raises(
        AnnotationError, match=r"Charades_v1_classes.txt:2: expected 'cNNN <name>', got 'x01 Bad code'"
    ):
        get_adapter("charades").class_names(root)
