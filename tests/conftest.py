"""Offline fixtures: tiny random RoBERTa and BERT models with in-memory tokenizers, synthetic data.

Nothing here touches the network or ../shared. Models are saved to temporary folders so the code
under test loads them exactly as it loads a user's local model directory.
"""

from __future__ import annotations

import csv
import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` precision measures fp32 against bf16 per machine, and under the suite's own load a probe can
# come out either way: tests train in one fixed precision (tests of the probe itself unset this).
os.environ.setdefault("LORABUDGET_AUTO_PRECISION", "fp32")

# the bad-input tables' workspace fixtures (finished, ws, onnx_export, mounts)
pytest_plugins = ["bad_input_workspace"]

CLASS_WORDS = {
    0: ["president", "election", "minister", "war", "embassy", "treaty", "parliament", "refugees"],
    1: ["game", "team", "score", "match", "coach", "season", "league", "playoff"],
    2: ["market", "stocks", "profit", "shares", "earnings", "bank", "merger", "investors"],
    3: ["software", "internet", "computer", "chip", "space", "science", "wireless", "research"],
}
FILLER = ["the", "a", "of", "to", "in", "on", "and", "said", "today", "new", "after", "over", "its", "for"]
VOCAB_WORDS = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))


def synthetic_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Rows whose class is signalled by keywords among filler words, lengths varying 4..40 words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 4
        length = rng.randint(4, 40)
        words = [rng.choice(FILLER) for _ in range(length)]
        for _ in range(max(2, length // 2)):
            words[rng.randrange(length)] = rng.choice(CLASS_WORDS[label])
        rows.append((" ".join(words), label))
    rng.shuffle(rows)
    return rows


MULTI_LABEL_CLASSES = ["business", "sports", "tech", "world"]  # sorted: the order a run infers
_MULTI_WORDS = {"world": CLASS_WORDS[0], "sports": CLASS_WORDS[1], "business": CLASS_WORDS[2], "tech": CLASS_WORDS[3]}


def multilabel_rows(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """Rows with 0..3 classes, each signalled by its keyword group among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = i % 4  # 0, 1, 2 or 3 classes
        classes = sorted(rng.sample(MULTI_LABEL_CLASSES, k))
        length = rng.randint(6, 30)
        words = [rng.choice(FILLER) for _ in range(length)]
        for name in classes:
            for _ in range(3):
                words[rng.randrange(length)] = rng.choice(_MULTI_WORDS[name])
        rows.append((" ".join(words), classes))
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_per_module():
    """Each test module starts at the process's own torch thread count. Loading a run to predict or
    serve with ``threads`` sets the count for the whole process (as it should); left over, it made
    test_resume's in-process runs compute at 1 thread against its subprocess's 2, and matrix
    products summed in another order differ in their last bits."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """``cut(run, n)``: call ``run()`` (an in-process training) with SIGTERM pending at its ``n``-th step
    boundary, as the signal handler would leave it; the run must stop with ``Terminated``."""
    import signal

    import lorabudget.training.session as session_mod
    from lorabudget.signals import Terminated

    def cut(run, n: int = 3) -> None:
        checks = []

        def pending():
            checks.append(1)
            return signal.SIGTERM if len(checks) == n else None

        monkeypatch.setattr(session_mod, "stop_pending", pending)
        try:
            with pytest.raises(Terminated):
                run()
        finally:
            monkeypatch.setattr(session_mod, "stop_pending", lambda: None)

    return cut


@pytest.fixture(scope="session")
def multilabel_dir(tmp_path_factory) -> Path:
    """train.csv (240 rows, text,labels with `|`-joined class names), test.csv (80 rows), unlabelled.csv."""
    d = tmp_path_factory.mktemp("multilabel")
    write_csv(d / "train.csv", [(t, "|".join(c)) for t, c in multilabel_rows(240, 1)], header=["text", "labels"])
    test = multilabel_rows(80, 2)
    write_csv(d / "test.csv", [(t, "|".join(c)) for t, c in test], header=["text", "labels"])
    write_csv(d / "unlabelled.csv", [(t,) for t, _ in test], header=["text"])
    return d


def make_tokenizer(kind: str):
    """A word-level fast tokenizer with the special tokens of ``kind`` ('roberta' or 'bert')."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        bos, eos, pad, unk, mask = specials
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        pad, unk, bos, eos, mask = specials
    vocab = {tok: i for i, tok in enumerate(specials + VOCAB_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
        cls_token=bos,
        sep_token=eos,
        model_max_length=128,
    )


# Room for the config's default model.max_length (256), which build_model checks against the positions.
TINY_POSITIONS = 260


def _extend_positions(model, positions: int) -> None:
    """Grow the position table to ``positions`` rows, the rows drawn before kept as they were: every
    other weight, and so what the tests' tiny runs learn, stays the same as with the shorter table."""
    import torch

    old = model.embeddings.position_embeddings
    new = torch.nn.Embedding(positions, old.embedding_dim, padding_idx=old.padding_idx)
    with torch.no_grad():
        new.weight.normal_(0.0, model.config.initializer_range, generator=torch.Generator().manual_seed(1))
        new.weight[: old.num_embeddings] = old.weight
    model.embeddings.position_embeddings = new
    model.config.max_position_embeddings = positions


def make_model_dir(path: Path, kind: str, hidden_size: int = 32, intermediate_size: int = 48) -> Path:
    import torch
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    tokenizer = make_tokenizer(kind)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=intermediate_size,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    if kind == "roberta":
        model = RobertaModel(RobertaConfig(**common, max_position_embeddings=132, pad_token_id=1, type_vocab_size=1))
    else:
        model = BertModel(BertConfig(**common, max_position_embeddings=130, pad_token_id=0))
    _extend_positions(model, TINY_POSITIONS)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


# Tiny random configs of every encoder family lorabudget maps (methods/sites.py): hidden 32, 3 layers
# (ALBERT: 3 layers applied from one shared set of weights), vocabularies of the word-level tokenizer.
FAMILY_KINDS = (
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "mpnet",
    "distilbert",
    "deberta-v2",
    "modernbert",
    "albert",
)
_ROBERTA_TOKENIZED = {"roberta", "xlm-roberta", "mpnet"}


def make_family_model_dir(path: Path, kind: str) -> Path:
    """A tiny random encoder of ``kind`` (a transformers model_type) with a word-level tokenizer, saved
    as a local model folder."""
    import torch
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    tokenizer = make_tokenizer("roberta" if kind in _ROBERTA_TOKENIZED else "bert")
    ids = dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id
    )
    size = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48)
    bert_like = dict(size, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=260)
    values = {
        "bert": dict(bert_like),
        "roberta": dict(bert_like, type_vocab_size=1),
        "xlm-roberta": dict(bert_like, type_vocab_size=1),
        "electra": dict(bert_like, embedding_size=16),
        "mpnet": dict(bert_like),
        "distilbert": dict(dim=32, n_layers=3, n_heads=2, hidden_dim=48, max_position_embeddings=260),
        "deberta-v2": dict(
            bert_like,
            relative_attention=True,
            position_buckets=16,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            type_vocab_size=0,
        ),
        "modernbert": dict(
            size,
            max_position_embeddings=132,
            global_attn_every_n_layers=2,
            local_attention=8,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            mlp_dropout=0.1,
        ),
        "albert": dict(bert_like, embedding_size=16, num_hidden_groups=1, inner_group_num=1),
    }[kind]
    config = CONFIG_MAPPING[kind](vocab_size=len(tokenizer), **ids, **values)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """``family_model_dir(kind)`` -> a tiny random model folder of that family (built once per session)."""
    built: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in built:
            built[kind] = make_family_model_dir(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)
        return built[kind]

    return make


def write_csv(path: Path, rows, header=None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """train.csv (240 rows, text,label), test.csv (80 labelled rows), unlabelled.csv (text only)."""
    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", synthetic_rows(240, seed=1))
    test = synthetic_rows(80, seed=2)
    write_csv(d / "test.csv", test)
    write_csv(d / "unlabelled.csv", [(t,) for t, _ in test], header=["text"])
    return d


@pytest.fixture(scope="session")
def make_config(tiny_roberta, data_dir):
    """The one source of run configs in the tests: ``make(cache_dir, **sections)`` -> a small, fast config
    dict for the tiny RoBERTa on the synthetic data; a dict section updates the base's section (e.g.
    ``model={"name": other_dir}``), anything else replaces it."""

    def make(cache_dir: Path, **sections):
        values = {
            "name": "tiny",
            "model": {
                "name": str(tiny_roberta),
                "max_length": 64,
                "labels": ["World", "Sports", "Business", "Sci/Tech"],
            },
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
            "data": {"train": str(data_dir / "train.csv"), "validation_size": 40, "cache_dir": str(cache_dir)},
            "training": {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "log_every": 2, "seed": 7},
        }
        for section, overrides in sections.items():
            if isinstance(overrides, dict):
                values.setdefault(section, {}).update(overrides)
            else:
                values[section] = overrides
        return values

    return make


@pytest.fixture
def tiny_config(make_config, tmp_path):
    """:func:`make_config` with this test's own cache folder: ``tiny_config(**sections)``."""
    return lambda **sections: make_config(tmp_path / "cache", **sections)


@pytest.fixture
def padded_batch():
    """``make(seed=0, vocab=40)`` -> (input ids [4, 12], attention mask): a small batch with two padded rows."""
    import torch

    def make(seed: int = 0, vocab: int = 40):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, vocab, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        mask[3, 5:] = 0
        return ids, mask

    return make


# --------------------------------------------------------------------------------------------
# A real PostgreSQL server, started for the session by the tests that need one


def _postgres_bin() -> str | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.isfile(os.path.join(folder, "initdb")) and os.path.isfile(os.path.join(folder, "pg_ctl")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """URL of a PostgreSQL server's `postgres` database, the server started in a temporary folder."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin; "
            "install the `postgresql` package"
        )
    pytest.importorskip("psycopg2", reason="psycopg2 (psycopg2-binary) is needed for Optuna's PostgreSQL storage")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="lorabudget-pg-"))
    data = folder / "data"
    if as_user:
        os.chown(folder, pw.pw_uid, pw.pw_gid)
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        run(
            f"{bindir}/pg_ctl",
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off",
            "start",
        )
    except subprocess.CalledProcessError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {err.stderr}") from err
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)
