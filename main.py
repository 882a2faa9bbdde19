#!/usr/bin/env python
"""UniMed Label command line: ``python main.py COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent

APP_DIR = REPO / "apps" / "unimed"
DEFAULT_CHECKPOINT = APP_DIR / "model" / "unimed.pt"
SAMPLE_DATASTORE = REPO / "sample_datastore"
RUNTIME_DATASTORE = REPO / "runtime" / "datastore"
DEFAULT_USERS = REPO / "runtime" / "auth" / "users.json"


class CommandError(Exception):
    """A command that cannot run as asked; main() prints the message and exits 2."""


# -- serve -----------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """Start the MONAI Label server with the UniMed app."""
    _check_host(args)
    studies = args.studies
    if studies is None:
        studies = RUNTIME_DATASTORE
        if not studies.exists():
            # serve a working copy, so saved labels never touch the shipped sample
            shutil.copytree(SAMPLE_DATASTORE, studies, ignore=shutil.ignore_patterns("LICENSES", "SOURCES.md"))
            print(f"copied the sample datastore to {studies}")
    elif not str(studies).startswith(("http://", "https://")) and not Path(studies).is_dir():
        raise CommandError(f"--studies {studies}: no such folder")
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", str(studies),
           "--host", args.host, "--port", str(args.port)]
    for key, value in args.conf or []:
        cmd += ["--conf", key, value]
    if args.cors_origin:
        cmd += ["--conf", "cors_origins", ",".join(args.cors_origin)]
    env = dict(os.environ, MONAI_LABEL_TRACKING_ENABLED="false")
    with _login_realm(args, env):
        print(" ".join(cmd), flush=True)
        from servers.child_process import run_in_foreground

        return run_in_foreground(cmd, env)


def _check_host(args: argparse.Namespace) -> None:
    """Refuse a host other than loopback without a login (--auth, or MONAI_LABEL_AUTH_ENABLE for
    an outside realm such as Keycloak), unless --insecure."""
    import ipaddress

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    outside_realm = os.environ.get("MONAI_LABEL_AUTH_ENABLE", "").strip().lower() in ("1", "true", "yes", "on")
    if loopback or args.auth or outside_realm:
        return
    if not args.insecure:
        raise CommandError(f"--host {args.host} is reachable from the network: add --auth (users: main.py users add), "
                           "or --insecure to serve it to anyone who can reach it")
    print(f"warning: --insecure: anyone who can reach {args.host}:{args.port} can read images, save labels and "
          "replace the model", file=sys.stderr)


@contextlib.contextmanager
def _login_realm(args: argparse.Namespace, env: dict[str, str]):
    """With --auth: the embedded login realm on loopback, and the MONAI Label settings that make
    the server verify its tokens (set in ``env``); without it, nothing."""
    if not args.auth:
        yield None
        return
    from servers.auth_realm import LocalRealm
    from servers.users import UserStore

    users = UserStore(args.users)
    try:
        known = users.users()
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if "admin" not in known.values():
        raise CommandError(f"--auth: {args.users} has no admin; add one: main.py users add NAME --role admin "
                           f"--users {args.users}")
    with LocalRealm(users, env=env) as realm:
        env.update(MONAI_LABEL_AUTH_ENABLE="true", MONAI_LABEL_AUTH_REALM_URI=realm.uri)
        print(f"login: {len(known)} user(s) from {args.users}; tokens from {realm.uri} (loopback only)", flush=True)
        yield realm


# -- users -----------------------------------------------------------------------------------------
def cmd_users(args: argparse.Namespace) -> int:
    """Manage the users of ``serve --auth``: add (password read from stdin), remove, list."""
    import getpass

    from servers.users import UserStore

    store = UserStore(args.users)
    if args.action in ("add", "remove") and not args.name:
        raise CommandError(f"users {args.action}: give the user's NAME")
    if args.action == "add" and args.role is None:
        raise CommandError("users add: give --role (admin, reviewer, annotator or user)")
    try:
        if args.action == "add":
            if sys.stdin.isatty():
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise CommandError("the two passwords differ")
            else:
                password = sys.stdin.readline().rstrip("\r\n")
            store.add(args.name, args.role, password)
            print(f"user {args.name} ({args.role}) saved in {store.path}")
        elif args.action == "remove":
            store.remove(args.name)
            print(f"user {args.name} removed from {store.path}")
        else:
            for name, role in sorted(store.users().items()):
                print(f"{name:24s} {role}")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    return 0


# -- pacs ------------------------------------------------------------------------------------------
def cmd_pacs(args: argparse.Namespace) -> int:
    """Start a local Orthanc PACS with DICOMweb (Debian packages orthanc and orthanc-dicomweb),
    put test studies in it, and keep it running until Ctrl-C.

    The studies: the sample BraTS FLAIR written as a DICOM MR series by the project's own
    converter, and, with --ct, an (anonymised) CT DICOM series folder. Then serve it with
    ``python main.py serve --studies http://127.0.0.1:PORT/dicom-web``.
    """
    import signal
    import time

    from servers.orthanc import Orthanc, OrthancError, write_test_studies

    def stop(signum, frame):  # `kill` stops Orthanc as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    root = Path(args.dir)
    if args.ct and not Path(args.ct).is_dir():
        raise CommandError(f"--ct {args.ct}: no such folder")
    try:
        pacs = Orthanc(root, port=args.port).start()
    except OrthancError as exc:
        raise CommandError(str(exc)) from exc
    try:
        if not args.no_upload:
            studies = write_test_studies(root / "studies", brats=SAMPLE_DATASTORE / "brats_pat0001_flair.nii.gz",
                                         ct_dicom=Path(args.ct) if args.ct else None)
            for modality, files in studies.items():
                pacs.upload(files)
                print(f"uploaded {modality} series: {len(files)} instances", flush=True)
        print(f"Orthanc is serving {len(pacs.series())} series; DICOMweb: {pacs.dicomweb}", flush=True)
        print(f"next: python main.py serve --studies {pacs.dicomweb}    (Ctrl-C here stops Orthanc)", flush=True)
        while pacs.process is not None and pacs.process.poll() is None:
            time.sleep(1)
        raise CommandError(f"Orthanc exited; see {pacs.log_file}")
    except KeyboardInterrupt:
        return 0
    finally:
        pacs.stop()


# -- infer -----------------------------------------------------------------------------------------
def cmd_infer(args: argparse.Namespace) -> int:
    """Run one task on one image file, no server needed."""
    from unimed.labels import parse_labels
    from unimed.modalities import modalities_from_name, parse_modalities, tag_modalities
    from unimed.service import ModelService
    from unimed.tasks import TASKS
    from unimed.transforms import load_image
    from unimed.writers import write_label_map

    image = load_image(args.image)
    try:
        modalities = parse_modalities(args.modalities, channels=int(image.shape[0]))
    except ValueError as exc:
        raise CommandError(f"--modalities: {exc}") from exc
    modalities = modalities or modalities_from_name(args.image, int(image.shape[0]))
    service = ModelService(args.checkpoint, spacing_3d=args.grid_spacing, max_size_3d=args.max_grid)
    if not service.info()["trained"]:
        print(f"warning: {service.info()['problem']}; the answer comes from UNTRAINED weights", file=sys.stderr)
    pred = service.predictor().predict(tag_modalities(image, modalities), args.task, parse_labels(args.labels))
    print(f"channels read as: {', '.join(modalities) if modalities else 'unknown modality'}")
    spec = TASKS[pred.task]
    lines, result = spec.report(pred, args.image)
    print("\n".join(lines))
    if args.out and spec.output_file == "label_map":
        shutil.move(write_label_map(pred), args.out)
        print(f"label map written to {args.out}")
    elif args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"result written to {args.out}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in pred.seconds.items()))
    return 0


# -- info ------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    """Describe the served checkpoint, the network and the label space."""
    from unimed.service import ModelService

    service = ModelService(args.checkpoint)
    info = service.info()
    model = service.model
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["config"] = model.config.to_dict()
    info["labels"] = [{"id": lab.id, "name": lab.name, "tasks": sorted(t.value for t in lab.tasks)} for lab in model.registry]
    print(json.dumps(info, indent=2, default=str))
    return 0


# -- pretrain / evaluate / versions ---------------------------------------------------------------
def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train the shipped checkpoint on every dataset of a data folder and write its model card.

    The run's state is saved to MODEL_DIR/pretrain_state.pt every 5 minutes, at the end and on
    Ctrl-C or SIGTERM; --resume continues it (same --steps and --seed; --minutes is the whole
    run's budget, every part counted).
    """
    from trainers.joint import check_device
    from trainers.pretrain import STATE_FILE, Holdout, default_config, pretrain
    from trainers.run_state import TrainingInterrupted

    data = Path(args.data)
    if not data.is_dir():
        raise CommandError(f"--data {data}: no such folder")
    try:
        check_device(args.device)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    state = Path(args.model_dir) / STATE_FILE
    if args.resume and not state.is_file():
        raise CommandError(f"--resume: no saved run at {state} (pretrain saves one there as it trains)")
    config = default_config(args.minutes)
    if args.steps is not None:
        config.steps = args.steps
    config.seed = args.seed
    try:
        holdout = Holdout.parse(args.hold_out) if args.hold_out else None
        card = pretrain(data, args.model_dir, config, progress=not args.no_progress, evaluate_after=not args.no_eval,
                        device=args.device, resume=args.resume, holdout=holdout, all_splits=args.all_splits,
                        leave_out=args.leave_out_label, teachers=args.teachers)
    except ValueError as exc:  # a folder without datasets, or a saved run with another config
        raise CommandError(str(exc)) from exc
    except TrainingInterrupted as exc:
        print(f"{exc}; to continue, run the same command with --resume", file=sys.stderr)
        return 128 + exc.signum
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if not card:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    summary = ("version", "steps", "train_minutes", "devices", "processes", "replicas_agree")
    print(json.dumps({k: card[k] for k in summary}, indent=2))
    for name, r in card.get("validation", {}).items():
        print(f"{name:12s} " + ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if isinstance(v, float)))
    return 0


def cmd_cv_card(args: argparse.Namespace) -> int:
    """Put the held-out figures of `pretrain --hold-out` runs (scripts/pretrain_cv.sh's
    OUT/holdout_*) into the model card of the run that ships (OUT/all): the mean and sample sd
    over runs of every metric, the held-out cases and the commands that reproduce them."""
    from trainers.model_card import cross_validation_section, format_cross_validation, write_model_card

    cards = [_read_card(Path(run) / "model_card.json", "run") for run in args.runs]
    for run, card in zip(args.runs, cards):
        if not card.get("validation"):
            raise CommandError(f"{Path(run) / 'model_card.json'} has no validation figures (an --all-splits or "
                               "--no-eval run): give the --hold-out runs' folders")
    model_dir = Path(args.model_dir)
    target = _read_card(model_dir / "model_card.json", "--model-dir")
    try:
        section = cross_validation_section(cards, args.runs, model_dir)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    target["cross_validation"] = section
    write_model_card(model_dir, target)
    print(format_cross_validation(section["datasets"]))
    print(f"written to {model_dir / 'model_card.json'} and {model_dir / 'MODEL_CARD.md'}")
    return 0


def _read_card(path: Path, what: str) -> dict:
    """A model card read from ``path``; a missing or unreadable one is a CommandError naming it."""
    if not path.is_file():
        raise CommandError(f"{what} {path.parent}: no model_card.json (not a finished pretrain run)")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"{path}: not a readable model card ({exc})") from exc
    if not isinstance(card, dict):
        raise CommandError(f"{path}: not a model card (a JSON object)")
    return card


def cmd_teach(args: argparse.Namespace) -> int:
    """Teach a checkpoint a new label from a folder of annotated images; writes a new checkpoint."""
    from trainers.teach import teach
    from unimed.checkpoint import load_checkpoint, save_checkpoint

    if not Path(args.data).is_dir():
        raise CommandError(f"--data {args.data}: no such folder")
    replay = {"auto": "auto", "none": None}.get(args.replay_data.lower(), args.replay_data)
    if replay not in ("auto", None) and not Path(replay).is_dir():
        raise CommandError(f"--replay-data {args.replay_data}: no such folder")
    if args.minutes is not None and args.minutes <= 0:
        raise CommandError(f"--minutes must be positive, got {args.minutes}")
    model, meta = load_checkpoint(args.checkpoint)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        report = teach(model, args.label, args.data, tasks=tasks, steps=args.steps, minutes=args.minutes,
                       replay_data=replay, token_steps=args.token_steps, seed=args.seed,
                       contrast=_teach_contrast(args.contrast), progress=not args.no_progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    out = save_checkpoint(model, args.out, {**meta, "kind": "teach", "base": str(args.checkpoint), "taught": report})
    print(json.dumps(report, indent=2))
    print(f"checkpoint with label {report['label']['name']!r} written to {out}")
    return 0


def _teach_contrast(value: str) -> float | None:
    """``teach --contrast``: ``auto`` (None: by modality), else a probability in [0, 1]."""
    if value.strip().lower() == "auto":
        return None
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise CommandError(f"--contrast is auto or a probability in [0, 1], got {value!r}")
    return share


def cmd_train_clicks(args: argparse.Namespace) -> int:
    """Teach a checkpoint clicks and boxes on the segmentation datasets of a data folder.

    Every weight but the click modules stays frozen, so the checkpoint's automatic answers are
    bit-identical to the base's; writes a new checkpoint (atomically).
    """
    from trainers.click_training import (ClickTrainConfig, click_sources, enable_clicks, pseudo_object_sources,
                                         train_clicks)
    from unimed.checkpoint import load_checkpoint, save_checkpoint

    if not Path(args.data).is_dir():
        raise CommandError(f"--data {args.data}: no such folder")
    if args.minutes <= 0 or args.steps <= 0:
        raise CommandError("--minutes and --steps must be positive")
    if not 0.0 <= args.pseudo_objects <= 1.0:
        raise CommandError(f"--pseudo-objects is a share of steps in [0, 1], got {args.pseudo_objects}")
    if not 0.0 < args.pseudo_max_share <= 1.0:
        raise CommandError(f"--pseudo-max-share is a share of an image in (0, 1], got {args.pseudo_max_share}")
    base, meta = load_checkpoint(args.checkpoint)
    model = enable_clicks(base)
    try:
        config = ClickTrainConfig(steps=args.steps, max_minutes=args.minutes, seed=args.seed,
                                  pseudo_objects=args.pseudo_objects, pseudo_max_share=args.pseudo_max_share)
        pseudo = pseudo_object_sources(args.data) if args.pseudo_objects > 0 else []
        report = train_clicks(model, click_sources(args.data), config, pseudo_sources=pseudo,
                              progress=not args.no_progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    part = {**report, "base": str(args.checkpoint),
            "command": f"python main.py train-clicks --data {args.data} --pseudo-objects {args.pseudo_objects} "
                       f"--pseudo-max-share {args.pseudo_max_share}"}
    parts = list(meta.get("clicks", {}).get("parts", [])) + [part]  # a continued run keeps its earlier parts
    clicks = {"parts": parts, "steps": sum(p["steps"] for p in parts),
              "minutes": round(sum(p["minutes"] for p in parts), 2)}
    out = save_checkpoint(model, args.out, {**meta, "clicks": clicks})
    print(json.dumps({k: report[k] for k in ("steps", "minutes", "sources", "pseudo_object_sources", "last_losses")},
                     indent=2))
    print(f"checkpoint with clicks written to {out}")
    return 0


def _write_json(result: dict, path: str | Path) -> None:
    """Write a command's result as JSON (its folder made), and say where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=float))
    print(f"written to {path}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Measure a checkpoint on a dataset folder: prints a table, optionally writes JSON."""
    from unimed.checkpoint import load_checkpoint
    from unimed.evaluation import evaluate, format_table

    model, meta = load_checkpoint(args.checkpoint)
    if args.label is not None:
        result = _evaluate_structure(model, args)
    else:
        result = evaluate(args.dataset, args.data, _predictor(model, args), split=args.split,
                          progress=not args.no_progress)
    result["checkpoint"] = {"path": str(args.checkpoint), "version": meta.get("version")}
    print(format_table(result))
    if args.json:
        _write_json(result, args.json)
    return 0


def _load_json(name: str, what: str) -> object:
    """The JSON in file ``name``, or a :class:`CommandError` that starts with ``what``."""
    try:
        return json.loads(Path(name).read_text())
    except FileNotFoundError as exc:
        raise CommandError(f"{what}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what}: not JSON ({exc})") from exc


def _read_clicks_result(name: str) -> dict:
    """A clicks-eval result file, or a one-line :class:`CommandError` that names what is wrong."""
    result = _load_json(name, f"--compare {name}")
    ok = (isinstance(result, dict) and isinstance(result.get("clicks"), int) and isinstance(result.get("cases"), list)
          and all(isinstance(c, dict) and "name" in c and isinstance(c.get("dice"), list) for c in result["cases"]))
    if not ok:
        raise CommandError(f"--compare {name}: not a clicks-eval result (no 'clicks' and 'cases' with names and dice)")
    return result


def cmd_clicks_eval(args: argparse.Namespace) -> int:
    """Interactive segmentation by simulated clicks on every case of a dataset folder: Dice after
    each click, clicks to reach 85 % and 90 % Dice, seconds per click (per case and mean ± sd).

    Each next click is at the innermost voxel of the largest error region (foreground where the
    answer missed, background where it spilled over). The target is --label's mask, or without
    --label every labelled voxel (BraTS: the whole tumour), asked for as the clicked object."""
    from unimed.checkpoint import load_checkpoint
    from unimed.interactive_evaluation import (clicks_evaluation, format_click_gain, format_clicks_report,
                                               paired_click_gain, plot_click_curves)

    if args.clicks < 1:
        raise CommandError(f"--clicks must be >= 1, got {args.clicks}")
    if not Path(args.data).exists():
        raise CommandError(f"--data {args.data}: no such file or folder")
    baseline = _read_clicks_result(args.compare) if args.compare else None
    if baseline is not None and baseline["clicks"] != args.clicks:
        raise CommandError(f"--compare {args.compare} has {baseline['clicks']} clicks per case, this run "
                           f"{args.clicks}: compare runs of the same --clicks")
    model, meta = load_checkpoint(args.checkpoint)
    if model.click_encoder is None:
        raise CommandError(f"--checkpoint {args.checkpoint} (version {meta.get('version')}) was not trained for clicks "
                           "(its config has clicks off)")
    predictor = _predictor(model, args)
    result = clicks_evaluation(args.dataset, args.data, predictor, label=args.label, clicks=args.clicks,
                               split=args.split, progress=not args.no_progress)
    result["checkpoint"] = {"path": str(args.checkpoint), "version": meta.get("version")}
    refinement = predictor.boundary_refinement
    result["boundary_refinement"] = None if refinement is None else dataclasses.asdict(refinement)
    print(format_clicks_report(result))
    if baseline is not None:
        try:
            gain = paired_click_gain(result, baseline)
        except ValueError as exc:
            raise CommandError(f"--compare {args.compare}: {exc}") from exc
        result["compared_to"] = {"path": str(args.compare), **gain}
        print(format_click_gain(gain))
    if args.json:
        _write_json(result, args.json)
    if args.png:
        print(f"plot written to {plot_click_curves(result, args.png)}")
    return 0


def cmd_teach_curve(args: argparse.Namespace) -> int:
    """Leave-one-label-out: teach a checkpoint pretrained without --label (pretrain
    --leave-out-label) that label from k annotated cases for each k, and score it on the
    dataset's validation split beside a single-task network trained from scratch on the same
    cases for the same budget; the old labels' figures before and after show forgetting."""
    from benchmarks.teach_curve import TeachCurveConfig, format_teach_curve, plot_teach_curve, teach_curve

    if not Path(args.data).is_dir():
        raise CommandError(f"--data {args.data}: no such folder")
    if not Path(args.checkpoint).is_file():
        raise CommandError(f"--checkpoint {args.checkpoint}: no such file")
    try:
        config = TeachCurveConfig(Path(args.data), Path(args.checkpoint), label=args.label, ks=tuple(args.ks),
                                  minutes=args.minutes, replay=not args.no_replay, seed=args.seed,
                                  repeats=args.repeats)
        result = teach_curve(config, progress=not args.no_progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(format_teach_curve(result))
    if args.json:
        _write_json(result, args.json)
    if args.png:
        print(f"plot written to {plot_teach_curve(result, args.png, args.reference or ())}")
    return 0


def _evaluate_structure(model, args: argparse.Namespace) -> dict:
    """``evaluate --dataset datastore --label NAME``: a folder in ``teach``'s layout (nonzero mask
    = the structure), scored as the checkpoint's label NAME."""
    from unimed.datasets.datastore import read_structure
    from unimed.evaluation import score_samples
    from unimed.labels import UnknownLabelError

    if args.dataset != "datastore":
        raise CommandError(f"--label scores one structure of a datastore-style folder: use --dataset datastore, "
                           f"not {args.dataset}")
    try:
        label = model.registry.get(args.label)
    except UnknownLabelError as exc:
        raise CommandError(f"--label {args.label}: {exc}") from exc
    samples = read_structure(args.data, label.name, label.id)
    scores = score_samples("datastore", samples, _predictor(model, args), progress=not args.no_progress)
    return {"dataset": "datastore", "split": None, "label": label.name, **scores}


def cmd_lopo(args: argparse.Namespace) -> int:
    """Leave-one-patient-out (or K-fold) cross-validation: a fresh model per fold, trained with
    pretraining's recipe restricted to the dataset on the other cases, scored on the held-out one
    as `evaluate` scores; prints each fold and the mean and sd of every metric."""
    from trainers.cross_validation import cross_validate, format_folds
    from trainers.joint import check_device
    from unimed.datasets import DatasetError

    if not Path(args.data).exists():
        raise CommandError(f"--data {args.data}: no such file or folder")
    init = None
    if args.init is not None:
        from unimed.checkpoint import load_checkpoint

        load_checkpoint(args.init)  # a bad file fails now, not after the first fold

        def init():
            return load_checkpoint(args.init)[0]
    try:
        check_device(args.device)
        result = cross_validate(args.dataset, args.data, minutes=args.minutes, steps=args.steps, folds=args.folds,
                                init=init, seed=args.seed, device=args.device, progress=not args.no_progress)
    except DatasetError:
        raise
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    result["init"] = args.init
    print(format_folds(result))
    if args.json:
        _write_json(result, args.json)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """List the numbered model versions, or publish an earlier one again (--rollback N)."""
    from unimed.model_store import ModelStore

    store = ModelStore(args.model_dir)
    if args.rollback is not None:
        try:
            v = store.rollback(args.rollback)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        print(f"published version {v.number} ({v.path}) as {store.published}")
        return 0
    current = store.current_version()
    print(f"published: {store.published} (version {current})")
    for v in store.versions():
        mark = "*" if v.number == current else " "
        print(f"{mark} v{v.number:04d}  {v.meta.get('trained_at', '?'):25s} {v.meta.get('kind', '')}")
    if not store.versions():
        print("  (no stored versions: training runs store them under versions/)")
    return 0


def _value(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# -- al-sim ----------------------------------------------------------------------------------------
def cmd_al_sim(args: argparse.Namespace) -> int:
    """Simulate active learning on a labelled dataset: compare strategies, label for label."""
    from tqdm import tqdm

    from benchmarks.al_simulation import SimulationConfig, StartModel, run_seed, simulate_seeds

    if not Path(args.data).exists():
        raise CommandError(f"--data {args.data}: no such file or folder")
    if args.checkpoint != "scratch" and not Path(args.checkpoint).exists():
        raise CommandError(f"--checkpoint {args.checkpoint}: no such file (or 'scratch' for untrained weights)")
    if args.seeds < 1 or args.jobs < 1:
        raise CommandError(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
    try:
        config = SimulationConfig(
            dataset=args.dataset, strategies=tuple(s.strip() for s in args.strategy.split(",") if s.strip()),
            rounds=args.rounds, per_round=args.per_round, steps_per_round=args.steps, lr=args.lr, ssl=args.ssl,
            ssl_loss=args.ssl_loss, initial=args.initial, pool_size=args.pool_size, val_size=args.val_size,
            seed=args.seed, device=args.device)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    start = StartModel(args.checkpoint)
    seeds = list(range(args.seed, args.seed + args.seeds))
    try:
        if len(seeds) == 1:
            bar = tqdm(total=len(config.strategies) * config.rounds, desc="al-sim", unit="round",
                       disable=args.no_progress, dynamic_ncols=True)

            def on_round(strategy: str, round_: int, value) -> None:
                bar.update(1)
                bar.set_postfix_str(f"{strategy} round {round_}: {value if value is None else round(value, 4)}")

            try:
                result = run_seed(args.data, start, config, threads=args.threads, on_round=on_round)
            finally:
                bar.close()
        else:
            bar = tqdm(total=len(seeds), desc="al-sim", unit="seed", disable=args.no_progress, dynamic_ncols=True)
            try:
                result = simulate_seeds(args.data, start, config, seeds, jobs=args.jobs, threads=args.threads,
                                        on_seed=lambda r: bar.update(1))
            finally:
                bar.close()
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    _report_al(result, args.json, args.png)
    return 0


def _report_al(result: dict, json_path: str | None, png_path: str | None) -> None:
    """Print an al-sim result's curves and reach, and write its JSON and plot when asked."""
    from benchmarks.al_simulation import plot

    seeds = result.get("seeds") or [result["config"]["seed"]]
    n = len(seeds)
    ssl = (result["config"].get("ssl_loss") or "on") if result["config"].get("ssl") else "off"
    print(f"{result['dataset']}: {result['metric']} on {result['val']} validation samples, pool {result['pool']}, "
          f"ssl {ssl}, start {result.get('start')}, {n} seed{'s' * (n > 1)}, "
          f"{result.get('wall_seconds', result['seconds'])} s")
    for name, curve in result["strategies"].items():
        cells = (f"{p['labels']}: {_value(p['value'])}" + (f" ± {_value(p['sd'])}" if n > 1 else "") for p in curve)
        print(f"  {name:12s} " + "  ".join(cells))
    reach = result.get("reach") or {}
    for name in result["strategies"]:
        if name in reach and name != "random":
            r = reach[name]
            got = "never" if r["labels"] is None else f"at {r['labels']} labels ({r['share']:.0%})"
            print(f"  {name} reaches random's final {_value(reach['target'])} {got}")
    if json_path:
        _write_json(result, json_path)
    if png_path:
        print(f"plot written to {plot(result, png_path)}")


def _malformed_run(result: dict) -> str | None:
    """What is wrong with an al-sim result's seed runs (its ``runs``, or itself), or None."""
    from benchmarks.al_simulation import seed_runs

    runs = seed_runs(result)
    if not isinstance(runs, list):
        return "'runs' is not a list"
    for i, run in enumerate(runs):
        where = "the result" if run is result else f"run {i}"
        if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
            return f"{where} has no 'config'"
        if not isinstance(run["config"].get("seed"), int):
            return f"{where} has no integer config seed"
        curves = run.get("strategies")
        if not isinstance(curves, dict) or not curves:
            return f"{where} has no 'strategies'"
        for strategy, curve in curves.items():
            if not isinstance(curve, list) or not all(isinstance(p, dict) and "labels" in p and "value" in p
                                                      for p in curve):
                return f"{where}: the {strategy} curve is not a list of {{'labels', 'value'}} points"
        for key in ("dataset", "metric", "pool", "val", "seconds"):
            if key not in run:
                return f"{where} has no {key!r}"
    return None


def cmd_al_combine(args: argparse.Namespace) -> int:
    """Merge al-sim results of one simulation whose seeds ran apart (on several machines, say)."""
    from benchmarks.al_simulation import merge_results

    results = [_read_al_result(name) for name in args.results]
    try:
        merged = merge_results(results)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    _report_al(merged, args.json, args.png)
    return 0


def _read_al_result(name: str) -> dict:
    """An al-sim result file, or a one-line :class:`CommandError` that names what is wrong."""
    result = _load_json(name, name)
    if not isinstance(result, dict) or "strategies" not in result or "config" not in result:
        raise CommandError(f"{name}: not an al-sim result (no 'strategies' and 'config')")
    problem = _malformed_run(result)
    if problem:
        raise CommandError(f"{name}: not an al-sim result ({problem})")
    return result


def cmd_al_compare(args: argparse.Namespace) -> int:
    """Compare two al-sim results seed by seed (say the unsupervised loss on and off): the mean
    gain at each point, its standard error, and how many seeds gain."""
    from benchmarks.al_simulation import paired_gain

    result, baseline = _read_al_result(args.result), _read_al_result(args.baseline)
    try:
        points = paired_gain(result, baseline, args.strategy)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    scale, digits, unit = (100.0, 1, " (points)") if args.points else (1.0, 4, "")
    print(f"{args.strategy}: {Path(args.result).name} against {Path(args.baseline).name}, {result['metric']}")
    print(f"| labels | result | baseline | gain{unit} | seeds with a gain |")
    print("|---|---|---|---|---|")
    for p in points:
        print(f"| {p['labels']} | {p['result']:.3f} | {p['baseline']:.3f} | {scale * p['gain']:+.{digits}f}"
              f" ± {scale * p['se']:.{digits}f} | {p['gains']} of {p['seeds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"strategy": args.strategy, "metric": result["metric"],
                                               "points": points}, indent=2))
        print(f"written to {args.json}")
    return 0


# -- benchmark -------------------------------------------------------------------------------------
DEFAULT_BENCH_JSON = REPO / "runtime" / "benchmarks" / "benchmark.json"


def _csv_ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {value!r}")
    return out


@contextlib.contextmanager
def _config_errors():
    """Turn a benchmark setting's ValueError (it names the constraint) into a CommandError."""
    try:
        yield
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Measure UniMed against single-task peers and MONAI Label's stock segmentation model.

    Sections: --speed (one volume, all tasks vs SegResNet, time and peak RSS), --server (/infer
    latency under 1/4/16 clients), --training (samples/s on the same patches), --accuracy (peers
    trained for the same budget, scored like `evaluate`). With no section flag: speed, server and
    training. Results merge into --json (accuracy per dataset, so a stopped run resumes), and a
    Markdown table and a PNG plot are written beside it.
    """
    from benchmarks.machine import machine_info
    from benchmarks.report import load_results, merge_results, plot, to_markdown, write_json

    sections = [s for s in ("speed", "server", "training", "accuracy") if getattr(args, s)]
    sections = sections or ["speed", "server", "training"]
    json_path = Path(args.json)
    try:
        results = load_results(json_path)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    progress = not args.no_progress
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise CommandError(f"--checkpoint {checkpoint}: no such file")

    started = {"load_average": machine_info()["load_average"]}

    def save(section: str, value) -> None:
        nonlocal results
        value["load_average_at_start"] = started["load_average"]
        started["load_average"] = machine_info()["load_average"]  # the next section's start
        results = merge_results(results, {"machine": machine_info(), section: value})
        write_json(results, json_path)
        print(f"{section}: written to {json_path}", flush=True)

    if "speed" in sections:
        from benchmarks.speed import SpeedConfig, benchmark_speed
        from benchmarks.stock import StockSegmentationConfig

        if not Path(args.image).exists():
            raise CommandError(f"--image {args.image}: no such file")
        predictor = {k: v for k, v in (("overlap", args.overlap), ("roi_size_3d", args.roi_size)) if v is not None}
        with _config_errors():
            config = SpeedConfig(image=Path(args.image), checkpoint=checkpoint, repeats=args.repeats,
                                 memory=not args.no_memory, threads=args.threads, predictor=predictor,
                                 stock=StockSegmentationConfig(out_channels=args.stock_out_channels))
        save("speed", benchmark_speed(config, progress=progress))
    if "server" in sections:
        from benchmarks.server_load import ServerLoadConfig, benchmark_server

        with _config_errors():
            config = ServerLoadConfig(app_dir=APP_DIR, studies=SAMPLE_DATASTORE, checkpoint=checkpoint,
                                      clients=tuple(args.clients), requests_per_client=args.requests_per_client,
                                      cold_repeats=args.repeats)
        save("server", benchmark_server(config, progress=progress))
    if "training" in sections:
        from benchmarks.training import TrainingBenchConfig, benchmark_training

        data = Path(args.data) / "brats2013"
        if not data.is_dir():
            raise CommandError(f"--data {args.data}: no brats2013 folder for the training benchmark")
        with _config_errors():
            config = TrainingBenchConfig(data=data, patch_size=args.patch_size, batch_size=args.batch_size,
                                         steps=args.train_steps, threads=args.threads)
        save("training", benchmark_training(config, progress=progress))
    if "accuracy" in sections:
        from benchmarks.peers import PEERS, AccuracyConfig, check_held_out, default_peer_minutes, run_accuracy
        from unimed.datasets import dataset_spec

        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets is not None else list(PEERS)
        unknown = sorted(set(datasets) - set(PEERS))
        if unknown or not datasets:
            raise CommandError(f"--datasets: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(PEERS)}")
        if not Path(args.data).is_dir():
            raise CommandError(f"--data {args.data}: no such folder")
        with _config_errors():
            for name in datasets:  # before any peer trains: a comparison on UniMed's own training data is void
                check_held_out(checkpoint, name, dataset_spec(name).val_split)
            minutes = args.peer_minutes if args.peer_minutes is not None else default_peer_minutes(checkpoint)
            config = AccuracyConfig(data=Path(args.data), checkpoint=checkpoint, peer_minutes=minutes,
                                    threads=args.threads, teachers=Path(args.teachers) if args.teachers else None)
        done = results.get("accuracy", {})
        for name in datasets:
            if name in done and not args.force:
                print(f"accuracy {name}: already in {json_path} (--force to redo)")
                continue
            load = machine_info()["load_average"]
            entry = {**run_accuracy(name, config, progress=progress), "load_average_at_start": load}
            results = merge_results(results, {"machine": machine_info(), "accuracy": {name: entry}})
            write_json(results, json_path)
            print(f"accuracy {name}: written to {json_path}", flush=True)
    markdown = Path(args.markdown) if args.markdown else json_path.with_suffix(".md")
    markdown.write_text(to_markdown(results) + "\n")
    print(to_markdown(results))
    png = plot(results, Path(args.plot) if args.plot else json_path.with_suffix(".png"))
    print(f"markdown: {markdown}" + (f", plot: {png}" if png else ""))
    return 0


# -- argument parsing ------------------------------------------------------------------------------
def _grid_spacing(value: str) -> float | None:
    from unimed.transforms import parse_grid_spacing

    try:
        return parse_grid_spacing(value, "--grid-spacing")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _predictor(model, args: argparse.Namespace):
    """A :class:`unimed.predictor.Predictor` on the command's model grid (--grid-spacing, --max-grid); click
    answers keep the network's own boundary with --no-boundary-refinement."""
    from unimed.predictor import Predictor

    kwargs = {"boundary_refinement": None} if getattr(args, "no_boundary_refinement", False) else {}
    return Predictor(model, spacing_3d=args.grid_spacing, max_size_3d=args.max_grid, **kwargs)


def _positive_multiple_of_16(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of voxels, got {value!r}") from None
    if n < 16 or n % 16:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 16, got {n}")
    return n


def _add_grid_spacing(p: argparse.ArgumentParser) -> None:
    from unimed.transforms import GRID_SPACING_3D, MAX_GRID_SIZE_3D

    p.add_argument("--grid-spacing", type=_grid_spacing, default=GRID_SPACING_3D, metavar="MM",
                   help="voxel size of a volume's model grid in mm (default %(default)s, what the shipped model was "
                        "trained at); 'none' fits the longest side to --max-grid whatever the field of view")
    p.add_argument("--max-grid", type=_positive_multiple_of_16, default=MAX_GRID_SIZE_3D, metavar="N",
                   help="the longest side a volume's model grid may have, for memory (default %(default)s): a wider "
                        "field of view is coarsened to fit; grids wider than the 144-voxel window are tiled")


def build_parser() -> argparse.ArgumentParser:
    from unimed.datasets import DATASETS, shared_datasets
    from unimed.task_names import Task

    parser = argparse.ArgumentParser(description=__doc__)  # prog: main.py, or unimed as installed
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the MONAI Label server (sample datastore by default)",
                       description=cmd_serve.__doc__)
    p.add_argument("--studies", default=None, help="datastore folder or DICOMweb URL (default: a working copy of "
                   "the shipped sample datastore in runtime/datastore)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="app config, repeatable")
    p.add_argument("--auth", action="store_true", help="log in with a user name and password (users from --users); "
                   "roles decide who may save labels, train and replace the model")
    p.add_argument("--users", default=str(DEFAULT_USERS), help="the users file of --auth (default: %(default)s)")
    p.add_argument("--insecure", action="store_true", help="allow a --host other than loopback without --auth")
    p.add_argument("--cors-origin", action="append", metavar="URL", help="a web origin (e.g. https://ohif.example.org) "
                   "whose pages may call the server; repeatable; default: none (same origin only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("users", help="manage the users of serve --auth", description=cmd_users.__doc__)
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("name", nargs="?", help="user name (add, remove)")
    p.add_argument("--role", choices=["admin", "reviewer", "annotator", "user"], default=None,
                   help="add: admin (everything), reviewer (train, replace the model), annotator (infer, save "
                        "labels), user (infer, read)")
    p.add_argument("--users", default=str(DEFAULT_USERS), help="the users file (default: %(default)s)")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("pacs", help="start a local Orthanc PACS (DICOMweb) with test studies", description=cmd_pacs.__doc__)
    p.add_argument("--dir", default=str(REPO / "runtime" / "orthanc"), help="Orthanc's configuration and database")
    p.add_argument("--port", type=int, default=8042, help="HTTP port on 127.0.0.1 (DICOMweb at /dicom-web)")
    p.add_argument("--ct", default=None, help="a CT DICOM series folder to upload too, e.g. "
                   "../shared/data/totalseg_examples/example_ct_dicom")
    p.add_argument("--no-upload", action="store_true", help="start with what the database already holds")
    p.set_defaults(func=cmd_pacs)

    p = sub.add_parser("infer", help="run one task on one image file", description=cmd_infer.__doc__)
    p.add_argument("--task", required=True, choices=[task.value for task in Task])
    p.add_argument("--image", required=True, help="NIfTI, NRRD, DICOM folder, JPEG or PNG")
    p.add_argument("--labels", default=None, help="comma-separated label names (default: all of the task's)")
    p.add_argument("--modalities", default=None,
                   help="each channel's modality, comma-separated: flair, t1, t1c, t2, ct, mr, red, green, blue, grey "
                        "(default: from the file name when it names one, e.g. *_flair.nii.gz; else unknown)")
    p.add_argument("--out", default=None, help="write the label map (segmentation) or the JSON result here")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    _add_grid_spacing(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("pretrain", help="train the shipped checkpoint on a data folder", description=cmd_pretrain.__doc__)
    p.add_argument("--data", required=True, help="a folder laid out like ../shared/data")
    p.add_argument("--model-dir", default=str(DEFAULT_CHECKPOINT.parent), help="where to publish (default: the app's)")
    p.add_argument("--minutes", type=float, default=80.0,
                   help="wall-clock training budget of the whole run (a resumed run counts its earlier parts)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N (under torchrun: each process's own GPU)")
    p.add_argument("--no-eval", action="store_true", help="skip the validation figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    cases = p.add_mutually_exclusive_group()
    cases.add_argument("--hold-out", metavar="DATASET:CASE[,CASE]",
                       help="keep these cases of one dataset out of training (from all its splits) and score them "
                            "instead of its validation split: one fold of a cross-validation of the whole recipe, "
                            "e.g. brats:brats_2013_pat0001_1")
    cases.add_argument("--all-splits", action="store_true",
                       help="train on every dataset's training and validation splits (no validation figures: "
                            "measure the recipe with --hold-out runs first)")
    p.add_argument("--leave-out-label", metavar="LABEL", default=None,
                   help="a label the run never sees (its annotations are dropped and the label space lacks it), "
                        "so that teach can measure learning it as new, e.g. lung_tumor")
    p.add_argument("--teachers", metavar="DIR", default=None,
                   help="distil single-task specialists: a folder of teacher files (benchmark --accuracy --teachers "
                        "DIR writes them) whose scores the classification targets of the images they scored blend in")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in MODEL_DIR/pretrain_state.pt (--minutes: the whole run's budget)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("cv-card", help="put pretrain --hold-out runs' figures (mean ± sd) into a model card",
                       description=cmd_cv_card.__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the --hold-out runs' folders, e.g. OUT/holdout_*")
    p.add_argument("--model-dir", required=True, help="the model folder whose card gets the figures, e.g. OUT/all")
    p.set_defaults(func=cmd_cv_card)

    p = sub.add_parser("teach", help="teach a checkpoint a new label from annotated images", description=cmd_teach.__doc__)
    p.add_argument("--label", required=True, help="the new label's name, e.g. spinal_cord")
    p.add_argument("--data", required=True,
                   help="images at the top, masks (nonzero = the structure) under labels/final/<image file name>")
    p.add_argument("--out", required=True, help="the new checkpoint")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="the base checkpoint")
    p.add_argument("--tasks", default="segmentation,detection",
                   help="what the label is taught, comma-separated: segmentation, detection, classification "
                        "(classification needs images whose mask is empty, which do not show the structure)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the whole run (the fine-tuning gets what the preparation leaves)")
    p.add_argument("--steps", type=int, default=300,
                   help="fine-tuning steps (the budget may stop it earlier); 0: the token's start only, "
                        "old outputs unchanged")
    p.add_argument("--token-steps", type=int, default=30, help="steps that start the new token from the examples")
    p.add_argument("--contrast", default="auto",
                   help="how often an image of the structure is shown in a random contrast, so that a structure "
                        "taught on one MR sequence is found on the others: a probability, or auto (default: 0.5 "
                        "for MR and other non-CT volumes, 0 for CT and 2D images)")
    p.add_argument("--replay-data", default="auto",
                   help="a folder in the shared data layout whose datasets replay the old labels; auto (default): "
                        "$UNIMED_REPLAY_DATA, else ../shared/data beside the project when present; none: the base "
                        "checkpoint's own answers on the images (keeps less)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_teach)

    p = sub.add_parser("teach-curve", help="leave-one-label-out: teach a label from k cases vs a scratch network",
                       description=cmd_teach_curve.__doc__)
    p.add_argument("--checkpoint", required=True, help="a checkpoint pretrained with --leave-out-label LABEL")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="a folder laid out like ../shared/data")
    p.add_argument("--label", default="lung_tumor",
                   help="the label left out: lung_tumor (MSD masks, Dice) or platelet (BCCD boxes, its AP50) "
                        "(default: %(default)s)")
    p.add_argument("--ks", type=_csv_ints, default=[1, 3, 5, 10], help="numbers of cases, e.g. 1,3,5,10")
    p.add_argument("--minutes", type=float, default=4.0, help="budget of each teaching run and of each scratch network")
    p.add_argument("--no-replay", action="store_true", help="teach without replaying the shared data")
    p.add_argument("--reference", type=float, nargs=2, metavar=("MEAN", "SD"), default=None,
                   help="the plot's band: the figure of networks pretrained with the label")
    p.add_argument("--seed", type=int, default=0, help="draws the cases and seeds training")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the curve for this many seeds from --seed, each drawing its own cases, and report "
                        "each k's mean and sd over them")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--png", default=None, help="plot the curve here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_teach_curve)

    p = sub.add_parser("train-clicks", help="teach a checkpoint clicks and boxes (other weights frozen)",
                       description=cmd_train_clicks.__doc__)
    p.add_argument("--data", required=True, help="a folder laid out like ../shared/data (its segmentation datasets)")
    p.add_argument("--out", required=True, help="the new checkpoint")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="the base checkpoint")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (the budget may stop it earlier)")
    p.add_argument("--pseudo-objects", type=float, default=0.5, metavar="SHARE",
                   help="share of steps that also train on objects nobody labelled, cut from every dataset's "
                        "images by intensity (0: labelled objects only; default 0.5)")
    p.add_argument("--pseudo-max-share", type=float, default=0.03, metavar="SHARE",
                   help="the largest such object, as a share of its image's voxels (default 0.03)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_clicks)

    p = sub.add_parser("evaluate", help="measure a checkpoint on a dataset folder", description=cmd_evaluate.__doc__)
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--data", required=True, help="the dataset's folder or file")
    p.add_argument("--split", default=None, help="split name (default: val where the folder has its own split "
                   "files and val among them, their one split if it has only one, else every case)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--label", default=None,
                   help="with --dataset datastore: a folder in teach's layout (nonzero mask = the structure), "
                        "scored as this label of the checkpoint (e.g. one it was taught)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_grid_spacing(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("clicks-eval", help="interactive segmentation by simulated clicks on a dataset folder",
                       description=cmd_clicks_eval.__doc__)
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--data", required=True, help="the dataset's folder or file (cases with a segmentation)")
    p.add_argument("--label", default=None, help="the label to segment (default: every labelled voxel, class-agnostic)")
    p.add_argument("--clicks", type=int, default=10, help="clicks per case (default %(default)s)")
    p.add_argument("--split", default=None, help="split name (default: as evaluate: every case of a folder without "
                   "split files)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--json", default=None, help="write per-case curves and the summary here")
    p.add_argument("--png", default=None, help="plot Dice per click here")
    p.add_argument("--compare", default=None, metavar="BASELINE.json",
                   help="another clicks-eval JSON of the same cases (say another checkpoint's): Dice after each "
                        "click minus its, paired by case, mean ± sd and cases better / worse")
    p.add_argument("--no-boundary-refinement", action="store_true",
                   help="keep the network's boundary: no refinement by the image's appearance at its resolution "
                        "(unimed.boundary_refinement), to measure what it adds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_grid_spacing(p)
    p.set_defaults(func=cmd_clicks_eval)

    p = sub.add_parser("lopo", help="leave-one-patient-out (or K-fold) cross-validation on a dataset folder",
                       description=cmd_lopo.__doc__)
    p.add_argument("--dataset", required=True, choices=list(shared_datasets()))
    p.add_argument("--data", required=True, help="the dataset's folder or file: every annotated case is held out once")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per fold (default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per fold (default: the recipe's)")
    p.add_argument("--folds", type=int, default=None,
                   help="K-fold instead of leave-one-out (needed above 20 cases)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start each fold from this checkpoint's weights (honest only if it never saw these cases)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--json", default=None, help="write per-fold metrics and the summary here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_lopo)

    p = sub.add_parser("versions", help="list model versions or roll back", description=cmd_versions.__doc__)
    p.add_argument("--model-dir", default=str(DEFAULT_CHECKPOINT.parent))
    p.add_argument("--rollback", type=int, default=None, metavar="N", help="publish version N again")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("al-sim", help="simulate active learning: strategies compared on a dataset",
                       description=cmd_al_sim.__doc__)
    p.add_argument("--dataset", required=True, choices=list(shared_datasets()))
    p.add_argument("--data", required=True, help="the dataset's folder or file (its train split is the pool, "
                   "its val split the fixed validation set)")
    p.add_argument("--strategy", default="random,uncertainty",
                   help="comma-separated: random, uncertainty, uncertainty_sampled, diversity")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=8, help="samples labelled per round")
    p.add_argument("--initial", type=int, default=0,
                   help="random seed-set labels shared by every strategy before round 1 (default 0)")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps per round")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ssl", action=argparse.BooleanOptionalAction, default=True,
                   help="the unsupervised loss on the still-unlabelled pool (default on)")
    p.add_argument("--ssl-loss", default="reconstruction", choices=["reconstruction", "consistency", "mean_teacher"],
                   help="masked-image reconstruction (default); consistency: the model's confident "
                        "segmentation of an image teaches a harder view of it; mean_teacher: the same, "
                        "taught by an average of the model's weights over steps")
    p.add_argument("--pool-size", type=int, default=None, help="a fixed random subset of the train split as the pool")
    p.add_argument("--val-size", type=int, default=None, help="a fixed random subset of the val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="starting model (default: the shipped one); 'scratch' for untrained weights")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat with seeds --seed .. --seed+N-1 and report the mean and sd (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at a time, in worker processes (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the curves here")
    p.add_argument("--png", default=None, help="plot the curves here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_al_sim)

    p = sub.add_parser("al-combine", help="merge al-sim results whose seeds ran apart",
                       description=cmd_al_combine.__doc__)
    p.add_argument("results", nargs="+", help="al-sim JSON files of the same simulation, disjoint seeds")
    p.add_argument("--json", default=None, help="write the merged curves here")
    p.add_argument("--png", default=None, help="plot the merged curves here")
    p.set_defaults(func=cmd_al_combine)

    p = sub.add_parser("al-compare", help="compare two al-sim results seed by seed (e.g. ssl on and off)",
                       description=cmd_al_compare.__doc__)
    p.add_argument("result", help="al-sim JSON, e.g. with the unsupervised loss on")
    p.add_argument("baseline", help="al-sim JSON of the same seeds, e.g. with it off")
    p.add_argument("--strategy", default="random", help="the curve compared (default random)")
    p.add_argument("--points", action="store_true", help="gains in points (x100), as Dice points")
    p.add_argument("--json", default=None, help="write the comparison here")
    p.set_defaults(func=cmd_al_compare)

    p = sub.add_parser("benchmark", help="speed, server, training and accuracy benchmarks", description=cmd_benchmark.__doc__)
    p.add_argument("--speed", action="store_true", help="one volume: UniMed's tasks vs the stock SegResNet")
    p.add_argument("--server", action="store_true", help="/infer latency of a real server at --clients")
    p.add_argument("--training", action="store_true", help="training samples/s on the same BraTS patches")
    p.add_argument("--accuracy", action="store_true", help="single-task peers trained for the same budget (long)")
    p.add_argument("--json", default=str(DEFAULT_BENCH_JSON), help="results file, merged into when it exists")
    p.add_argument("--markdown", default=None, help="Markdown tables (default: --json with .md)")
    p.add_argument("--plot", default=None, help="PNG plot (default: --json with .png)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--image", default=str(SAMPLE_DATASTORE / "brats_pat0001_flair.nii.gz"), help="speed: the volume")
    p.add_argument("--repeats", type=int, default=3, help="speed and cold server runs: timed repeats")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="speed: skip the per-variant peak RSS")
    p.add_argument("--overlap", type=float, default=None, help="speed: UniMed's sliding-window overlap")
    p.add_argument("--roi-size", type=int, default=None, help="speed: UniMed's 3D sliding-window size")
    p.add_argument("--stock-out-channels", type=int, default=5,
                   help="speed: SegResNet outputs (5: BraTS' labels + background; the stock app's 25 organs: 26)")
    p.add_argument("--clients", type=_csv_ints, default=[1, 4, 16], help="server: concurrency levels, e.g. 1,4,16")
    p.add_argument("--requests-per-client", type=int, default=3, help="server: requests each client sends")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="training/accuracy: the data folder")
    p.add_argument("--patch-size", type=int, default=96, help="training: cubic patch side")
    p.add_argument("--batch-size", type=int, default=2, help="training: patches per step")
    p.add_argument("--train-steps", type=int, default=5, help="training: timed steps per model")
    p.add_argument("--datasets", default=None,
                   help="accuracy: comma-separated datasets (default: every dataset with a peer)")
    p.add_argument("--peer-minutes", type=float, default=None,
                   help="accuracy: training budget per peer (default: UniMed's per-dataset share from its model card)")
    p.add_argument("--teachers", metavar="DIR", default=None,
                   help="accuracy: write each classification peer's scores on its training split to DIR/<dataset>.json "
                        "(teacher files for pretrain --teachers)")
    p.add_argument("--force", action="store_true", help="accuracy: redo datasets already in --json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("info", help="describe the checkpoint, network and label space", description=cmd_info.__doc__)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from unimed.checkpoint import CheckpointError
    from unimed.datasets import DatasetError
    from unimed.labels import UnknownLabelError
    from unimed.tasks import UnknownTaskError
    from unimed.transforms import ImageLoadError

    try:
        return args.func(args)
    except (CommandError, ImageLoadError, UnknownLabelError, UnknownTaskError, CheckpointError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
