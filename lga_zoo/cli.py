"""The ``lga-zoo`` command line: one subcommand per job (``lga-zoo SUBCOMMAND --help``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from .arguments import add_demo_arguments, add_train_arguments, fraction, positive_float, positive_int


def _explain(args: argparse.Namespace) -> int:
    from .attribution import METHODS, resolve_method
    from .hub import load
    from .inputs import open_image

    kwargs = {} if args.steps is None else {"steps": args.steps}
    if kwargs and "steps" not in METHODS[resolve_method(args.method, {})[0]]:  # aliases resolved
        stepped = sorted(name for name, defaults in METHODS.items() if "steps" in defaults)
        raise ValueError(f"--steps applies to the methods {stepped} (and their aliases), not {args.method!r}")
    out_paths = _map_paths(args.images, Path(args.out), args.method)
    model = load(args.model, device=args.device)
    target = int(args.target) if args.target and args.target.isdigit() else args.target
    stability = {"seed": args.seed} if args.stability else False
    for image_path, out_path in zip(args.images, out_paths):
        image = open_image(image_path)
        exp = model.explain(
            image, target=target, method=args.method, normalize=args.normalize, stability=stability, **kwargs
        )
        exp.save(out_path, show_stability=args.stability)
        print(f"{image_path}: {exp.describe()}; {exp.method} map written to {out_path}")
        if args.stability:
            used = exp.stability_settings
            print(
                f"  {exp.stability_text()} (top {used['k']:.0%} of pixels kept; noise and a "
                f"{used['attack_steps']}-step attack within {used['eps'] * 255:.3g}/255; 1 = unchanged)"
            )
    return 0


NOT_PNG = (".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pdf", ".svg", ".eps")


def _map_paths(images: list[str], out: Path, method: str) -> list[Path]:
    """Where ``lga-zoo explain`` writes each image's map: ``out`` itself for one image and a .png
    ``out``, else ``out/STEM_METHOD.png``, the stems numbered where two images share one (no map
    overwrites another). An ``out`` naming another picture format, or a .png for several images, is
    refused."""
    from .attribution import resolve_method

    suffix = out.suffix.lower()
    if suffix in NOT_PNG:
        raise ValueError(f"--out {out}: maps are written as PNG; give a .png file (one image) or a folder")
    if suffix == ".png" and not out.is_dir():
        if len(images) > 1:
            raise ValueError(f"--out {out} is one .png file for {len(images)} images; give a folder")
        return [out]
    method = resolve_method(method, {})[0]
    stems = [Path(image).stem for image in images]
    paths, seen = [], {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        numbered = stem if stems.count(stem) == 1 else f"{stem}_{seen[stem]}"
        paths.append(out / f"{numbered}_{method}.png")
    if len(set(paths)) < len(paths):
        raise ValueError(f"two maps would both be written to {out}; give the images distinct names")
    return paths


def _compare(args: argparse.Namespace) -> int:
    from .comparison import compare
    from .inputs import open_image

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    comparison = compare(
        open_image(args.image),
        models,
        attack=args.attack,
        method=args.method,
        steps=args.steps,
        seed=args.seed,
    )
    path = comparison.save(args.out)
    print(comparison.table())
    print(f"figure written to {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .local import available_here
    from .registry import get_entry, list_models

    names = list_models(args.pattern, pretrained=not args.all)
    if not names:
        print("no published models match" + ("" if args.all else " (add --all for models without weights)"))
        return 0
    rows = [("name", "params", "accuracy", "targeted top-k (grad)", "random top-k (grad)", "weights here")]
    for name in names:
        entry = get_entry(name)
        metrics = entry.metrics

        def cell(key, pct=False, m=metrics):
            return "-" if key not in m else (f"{m[key]:.2%}" if pct else f"{m[key]:.3f}")

        rows.append(
            (
                name,
                f"{entry.num_params / 1e6:.2f}M",
                cell("accuracy", True),
                cell("grad/targeted/topk"),
                cell("grad/random/topk"),
                available_here(name),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _card(args: argparse.Namespace) -> int:
    from .cards import family_of, summary_metrics
    from .hub import RESULTS_NAME, model_card_dir
    from .leaderboard import update_readme_table
    from .registry import all_entries, get_entry, reload, write_entries

    # zoo.json as it is now on disk: an `evaluate --publish` that ran for hours must not write back the
    # registry it read at its start over edits made meanwhile
    reload()
    entry = get_entry(args.name)
    folder = model_card_dir(args.name)
    folder.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results) if args.results else folder / RESULTS_NAME
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    if results is not None and results_path != folder / RESULTS_NAME:
        shutil.copyfile(results_path, folder / RESULTS_NAME)
    metrics = summary_metrics(results)
    if metrics != entry.metrics:
        entry = replace(entry, metrics=metrics)
        write_entries([entry if e.name == entry.name else e for e in all_entries()])
    # The cards of a family compare its models, so every published sibling's card is redrawn too.
    names = [entry.name] + [m.name for m in family_of(entry) if m.name != entry.name]
    for name in names:
        if name == entry.name or (model_card_dir(name) / "config.json").is_file():
            path = write_published_card(name)
            print(f"wrote {path.relative_to(model_card_dir(name).parents[1])}")
    readme = update_readme_table()
    if readme is not None:
        print(f"updated the zoo table in {readme.name}")
    return 0


def write_published_card(name: str) -> Path:
    """Render ``model_cards/NAME/README.md`` from the registry, its results.json and config.json, and
    its family's results."""
    from .cards import published_family_results, render_card
    from .folder import CARD_NAME, atomic_write_text, read_config
    from .hub import RESULTS_NAME, model_card_dir
    from .registry import get_entry

    entry = get_entry(name)
    folder = model_card_dir(name)
    results = json.loads((folder / RESULTS_NAME).read_text()) if (folder / RESULTS_NAME).is_file() else None
    config = read_config(folder) if (folder / "config.json").is_file() else None
    atomic_write_text(
        folder / CARD_NAME, render_card(entry, results, config, published_family_results(entry))
    )
    return folder / CARD_NAME


def _publish(args: argparse.Namespace) -> int:
    from .folder import CONFIG_NAME, WEIGHTS_NAME, load_model_folder, sha256_of, write_half_precision_folder
    from .hub import RESULTS_NAME, TRAIN_LOG_NAME, model_card_dir
    from .registry import all_entries, get_entry, write_entries
    from .train import LOG_NAME

    entry = get_entry(args.name)
    source = Path(args.source)
    model = load_model_folder(source)  # refuses a folder that does not load strictly
    if model.config["architecture"] != entry.architecture:
        raise ValueError(
            f"{source} holds a {model.config['architecture']}, the registry says {entry.architecture}"
        )
    params = sum(p.numel() for p in model.backbone.parameters())
    if params != entry.num_params:
        raise ValueError(f"{source} has {params} parameters, the registry says {entry.num_params}")
    differences = _differences_from_entry(model.config, entry)
    if differences:
        raise ValueError(
            f"{source} is not the model {entry.name} describes: " + "; ".join(differences) + ". Train it "
            f"with {entry.recipe}, or register it under its own name"
        )
    dest = model_card_dir(args.name)
    dest.mkdir(parents=True, exist_ok=True)
    if args.dtype == "float32":
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copyfile(source / name, dest / name)
    else:
        write_half_precision_folder(source, dest)
    # lga-zoo train writes OUT/log.jsonl beside the weights (older runs: OUT/model/ beside it)
    run_log = next(
        (p for p in (source / LOG_NAME, source.parent / LOG_NAME) if p.is_file()), source / LOG_NAME
    )
    if run_log.is_file():
        shutil.copyfile(run_log, dest / TRAIN_LOG_NAME)
    weights = dest / WEIGHTS_NAME
    entry = replace(
        entry,
        sha256=sha256_of(weights),
        size=weights.stat().st_size,
        config_sha256=sha256_of(dest / CONFIG_NAME),
        revision=None,  # the pinned commit held the replaced files; `lga-zoo push --pin` records a new one
    )
    write_entries([entry if e.name == entry.name else e for e in all_entries()])
    print(f"published {source} as {dest}; sha256 {entry.sha256}, {entry.size} bytes pinned in zoo.json")
    _drop_results_of_other_weights(dest / RESULTS_NAME, entry.sha256)
    return _card(argparse.Namespace(name=args.name, results=None))


def _differences_from_entry(config: dict, entry) -> list[str]:
    """How a run's config.json differs from its registry entry in what the weights were trained
    with: activation (and Softplus beta), regularizer settings, class names and preprocessing."""
    cfg, ours = config["pretrained_cfg"], config.get("lga_zoo", {})
    run = {
        "activation": ours.get("activation", "relu"),
        "classes": config.get("label_names"),
        "mean": cfg["mean"],
        "std": cfg["std"],
        "input_size": cfg["input_size"],
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": cfg.get("crop_pct", 1.0),
    }
    if entry.activation == "softplus":
        run["softplus_beta"] = ours.get("softplus_beta", 20.0)
    if "regularizer" in ours:  # a card must not name other settings than the weights were trained with
        run["regularizer"] = ours["regularizer"]
    return [
        f"{key} {value!r}, the registry says {getattr(entry, key)!r}"
        for key, value in run.items()
        if _as_lists(value) != _as_lists(getattr(entry, key))
    ]


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _drop_results_of_other_weights(results_path: Path, sha256: str) -> None:
    """Remove ``results_path`` when it measured other weights than ``sha256`` (the ones a publish
    replaced), so that no card, registry entry or README row shows them beside the new weights."""
    if not results_path.is_file():
        return
    measured = json.loads(results_path.read_text()).get("model", {}).get("sha256")
    if measured != sha256:
        results_path.unlink()
        print(
            f"removed {results_path.name}: it measured other weights (sha256 {str(measured)[:12]}...); "
            f"lga-zoo evaluate {results_path.parent.name} --publish measures these"
        )


def _push(args: argparse.Namespace) -> int:
    from .hub import model_card_dir, push, refuse_a_folder_named_like_a_zoo_model
    from .registry import all_entries, get_entry, write_entries

    own_folder = Path(args.name).expanduser()
    if own_folder.is_dir():
        refuse_a_folder_named_like_a_zoo_model(args.name)
        if args.pin:
            raise ValueError(
                "--pin records a zoo model's revision; a folder of your own has no registry entry"
            )
        commit = push(own_folder, args.repo_id, token=args.token, private=args.private)
        print(f"pushed {own_folder} to {args.repo_id} at commit {commit}")
        return 0
    entry = get_entry(args.name)
    folder = Path(args.folder) if args.folder else model_card_dir(args.name)
    _check_against_pins(folder, entry)
    commit = push(folder, args.repo_id, token=args.token, private=args.private)
    print(f"pushed {args.name} to {args.repo_id} at commit {commit}")
    if args.pin:
        entry = replace(entry, hf_repo_id=args.repo_id, revision=commit)
        write_entries([entry if e.name == entry.name else e for e in all_entries()])
        print(f"pinned revision {commit} in zoo.json")
    return 0


def _check_against_pins(folder: Path, entry) -> None:
    """Refuse to push a zoo model's folder whose weights or config.json are not the ones its registry
    entry pins: every verified download of them would fail."""
    from .folder import CONFIG_NAME, WEIGHTS_NAME, WeightsError
    from .hub import verify_config, verify_file

    if not entry.has_weights:
        raise ValueError(
            f"{entry.name} has no published weights to push; `lga-zoo publish {entry.name}` first"
        )
    for check, path, pin in (
        (verify_file, folder / WEIGHTS_NAME, (entry.sha256, entry.size)),
        (verify_config, folder / CONFIG_NAME, (entry,)),
    ):
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is missing; a pushable folder holds weights, config and card")
        try:
            check(path, *pin)
        except WeightsError as err:
            raise ValueError(
                f"not pushing {entry.name}: {err}. The registry (zoo.json) pins other files than "
                f"{str(folder)!r} holds; `lga-zoo publish {entry.name} --from RUN` pins a trained run"
            ) from None


def _download(args: argparse.Namespace) -> int:
    from .hub import download, download_target

    folder = download(args.name, revision=args.revision, cache_dir=args.cache_dir)
    pinned = download_target(args.name, args.revision)[2]
    checked = (
        " (checked against the zoo's sha256 pins)" if pinned is not None else " (no zoo pins: not checked)"
    )
    print(f"{args.name}: files in {folder}{checked}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """``lga-zoo evaluate``; under ``torchrun`` every process measures its share and rank 0 alone
    holds the outputs, writes the results, the state and the cards and prints the figures."""
    from .evaluate import EvalSettings

    if args.add:
        return _add_to_results(args)
    settings = EvalSettings(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()),
        n_robustness=args.n_images or DEFAULT_N_IMAGES,
        n_accuracy=args.n_accuracy,
        eps=args.eps,
        attack_steps=args.attack_steps,
        random_draws=args.random_draws,
        softplus_beta=args.softplus_beta,
        attack_map=args.attack_map,
        batch_size=args.batch_size,
        n_slow=args.n_images_slow,
        attack_amp=args.attack_amp,
        seed=0 if args.seed is None else args.seed,
        apgd_steps=args.apgd_steps,
        apgd_targets=args.apgd_targets,
    )
    command, own_folder, out = _evaluation_paths(args)
    state = Path(args.state) if args.state else _default_state_path(args.model, out, args.publish)
    with _holding_outputs(out, state):
        return _evaluate_into(args, settings, command, own_folder, out, state)


def _rank_world() -> tuple[int, int]:
    from .distributed import rank_world

    return rank_world()


def _holding_outputs(*paths: Path) -> contextlib.ExitStack:
    """Hold the lock of each output file (``.NAME.lock`` beside it) for the block: the places are
    checked writable before the work, and a second run writing the same file is refused. Under
    ``torchrun`` rank 0 alone holds them (the others write nothing)."""
    from .locks import holding

    stack = contextlib.ExitStack()
    if _rank_world()[0] != 0:
        return stack
    with stack:
        for path in dict.fromkeys(paths):
            stack.enter_context(holding(path.with_name(f".{path.name}.lock"), str(path)))
        return stack.pop_all()


def _evaluate_into(
    args, settings, command: str | None, own_folder: Path | None, out: Path, state: Path
) -> int:
    """The evaluation of ``_evaluate`` once its outputs are held."""
    from .cards import mean_and_interval
    from .evaluate import run_evaluation
    from .folder import atomic_write_text

    partial = out.with_name(out.stem + ".partial.json")
    results = run_evaluation(
        args.model,
        args.data_dir,
        args.split,
        settings,
        device=args.device,
        progress=not args.no_progress,
        command=command,
        on_partial=lambda so_far: atomic_write_text(partial, json.dumps(so_far, indent=2) + "\n"),
        state_path=state,
        resume=args.resume,
        stop_after_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    if _rank_world()[0] != 0:
        return 0 if results["complete"] else 3
    if not results["complete"]:  # on_partial has written the figures so far after the last batch
        print(
            f"stopped after {results['data']['n_robustness']} of {settings.n_robustness} robustness images "
            f"(--max-minutes); figures so far in {partial}; continue with the same command and --resume",
            file=sys.stderr,
        )
        return 3
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    print(
        f"accuracy {results['accuracy']['clean']:.2%} on {results['accuracy']['n_images']} images; results in {out}"
    )
    _print_apgd(results)
    for method, attacks in results["robustness"].items():
        for attack, values in attacks.items():
            if "topk" in values:
                print(f"  {method:22s} {attack:9s} top-k intersection {mean_and_interval(values['topk'])}")
    _refresh_cards(args, results, out, own_folder)
    return 0


DEFAULT_N_IMAGES = 1000
QUANTUS_SAMPLES = 50  # lga_zoo.quantus_scores.QuantusSettings.nr_samples (not imported: quantus is optional)


def _evaluation_paths(args: argparse.Namespace) -> tuple[str | None, Path | None, Path]:
    """The command as results record it, the model's own folder (None for a zoo model) and the
    results JSON the evaluation writes (with ``--add``: the one it adds to)."""
    import shlex

    from .hub import RESULTS_NAME, model_card_dir
    from .registry import list_models

    is_zoo_name = args.model in list_models(pretrained=False)
    recorded = _without_paths(sys.argv[2:], None if is_zoo_name else args.model)
    command = "lga-zoo evaluate " + " ".join(shlex.quote(a) for a in recorded) if args.record_argv else None
    own_folder = _own_model_folder(args.model)
    if args.publish and not is_zoo_name:
        raise ValueError(f"--publish writes a zoo model's card; {args.model!r} is not a zoo name")
    if args.publish and args.out:
        raise ValueError("--publish writes model_cards/NAME/results.json; leave out --out")
    if args.publish:
        out = model_card_dir(args.model) / RESULTS_NAME
    elif args.out:
        out = Path(args.out)
    elif own_folder is not None:
        out = own_folder / RESULTS_NAME  # a folder of one's own: results and card beside the weights
    else:
        out = Path("runs") / "evaluate" / Path(args.model).name / RESULTS_NAME
    return command, own_folder, out


def _print_apgd(results: dict) -> None:
    for norm, record in results["accuracy"].get("apgd", {}).items():
        low, high = record["ci95"] or (float("nan"), float("nan"))
        print(
            f"  APGD {norm:4s} eps {record['eps']:.4g}: {record['accuracy']:.2%} [{low:.2%}, {high:.2%}] robust "
            f"on {record['n_images']} images (APGD-CE alone {record['accuracy_apgd_ce']:.2%})"
        )


def _refresh_cards(args: argparse.Namespace, results: dict, out: Path, own_folder: Path | None) -> None:
    from .hub import RESULTS_NAME

    if args.publish:
        _card(argparse.Namespace(name=args.model, results=None))
    elif own_folder is not None and out == own_folder / RESULTS_NAME:
        _folder_card(own_folder, results)
        print(f"card refreshed: {own_folder / 'README.md'}")
    else:
        print("published files unchanged (add --publish to write the card, zoo.json and the leaderboard)")


def _add_to_results(args: argparse.Namespace) -> int:
    """``lga-zoo evaluate NAME --add apgd|quantus``: APGD (or the Quantus scores) on the robustness
    images of the results JSON the same command without ``--add`` writes (``--publish``: the published
    one), merged into it. Under ``torchrun`` rank 0 alone holds the outputs and writes."""
    command, own_folder, out = _evaluation_paths(args)
    if not out.is_file():
        raise ValueError(
            f"--add {args.add} adds to an existing evaluation's results; there is none at {str(out)!r} "
            "(evaluate in full first, or name the results with --out)"
        )
    try:
        results = json.loads(out.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{out} is not JSON ({error})") from None
    measured = {
        "--n-images": (args.n_images, results.get("data", {}).get("n_robustness")),
        "--seed": (args.seed, results.get("seed")),
        "--split": (args.split, results.get("data", {}).get("split")),
    }
    for flag, (given, recorded) in measured.items():
        if given is not None and given != recorded:
            raise ValueError(
                f"{flag} {given} with --add: {args.add} runs on the images {out} measured ({flag} {recorded}); "
                f"leave out {flag}"
            )
    state = Path(args.state) if args.state else _default_state_path(args.model, out, args.publish, args.add)
    if args.add == "quantus" and _rank_world()[1] > 1:
        raise ValueError("--add quantus runs in one process; start it without torchrun")
    with _holding_outputs(out, state):
        if args.add == "quantus":
            return _add_quantus(args, results, out, own_folder, command, state)
        return _add_apgd_into(args, results, command, own_folder, out, state)


def _add_apgd_into(
    args, results: dict, command: str | None, own_folder: Path | None, out: Path, state: Path
) -> int:
    """The APGD addition of ``_add_to_results`` once its outputs are held."""
    from .evaluate import run_apgd_addition

    merged, done = run_apgd_addition(
        args.model,
        args.data_dir,
        results,
        steps=args.apgd_steps,
        targets=args.apgd_targets,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        command=command,
        state_path=state,
        resume=args.resume,
        stop_after_seconds=args.max_minutes * 60 if args.max_minutes else None,
        what=str(out),
    )
    wanted = results["data"]["n_robustness"]
    if _rank_world()[0] != 0:
        return 0 if done == wanted else 3
    had = "apgd" in results["accuracy"]
    return _write_addition(args, "APGD figures", had, merged, (done, wanted), out, state, own_folder)


def _add_quantus(
    args: argparse.Namespace,
    results: dict,
    out: Path,
    own_folder: Path | None,
    command: str | None,
    state: Path,
) -> int:
    """``--add quantus``: the Quantus scores on the first --quantus-images robustness images of ``results``."""
    import logging

    from .quantus_scores import QuantusSettings, run_quantus_addition

    if not args.no_progress:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = QuantusSettings(
        n_images=args.quantus_images, nr_samples=args.quantus_samples, batch_size=args.batch_size
    )
    merged, done, wanted = run_quantus_addition(
        args.model,
        args.data_dir,
        results,
        settings,
        device=args.device,
        progress=not args.no_progress,
        command=command,
        state_path=state,
        resume=args.resume,
        stop_after_seconds=args.max_minutes * 60 if args.max_minutes else None,
        what=str(out),
    )
    had = "quantus" in results
    return _write_addition(args, "Quantus scores", had, merged, (done, wanted), out, state, own_folder)


def _write_addition(
    args: argparse.Namespace,
    label: str,
    replacing: bool,
    merged: dict,
    progress: tuple[int, int],
    out: Path,
    state: Path,
    own_folder: Path | None,
) -> int:
    """Write a completed ``--add`` (``label``: "APGD figures" or "Quantus scores") into ``out``, print
    its figures and refresh the cards; exit code 3 when it stopped early (``progress``: done, wanted)."""
    from .folder import atomic_write_text

    done, wanted = progress
    if done < wanted:
        print(
            f"stopped after {done} of {wanted} images (--max-minutes); {out} unchanged; continue with the same "
            "command and --resume",
            file=sys.stderr,
        )
        return 3
    if replacing:
        print(f"replacing the {label} {out} held")
    atomic_write_text(out, json.dumps(merged, indent=2) + "\n")
    state.unlink(missing_ok=True)
    print(f"{label} added to {out}")
    (_print_apgd if label.startswith("APGD") else _print_quantus)(merged)
    _refresh_cards(args, merged, out, own_folder)
    return 0


def _print_quantus(results: dict) -> None:
    from .cards import QUANTUS_NAMES, quantus_value

    for name, stat in results.get("quantus", {}).get("scores", {}).items():
        print(f"  {QUANTUS_NAMES.get(name, name)}: {quantus_value(stat)} on {stat['n']} images")


def _default_state_path(model: str, out: Path, publish: bool, addition: str | None = None) -> Path:
    """Where a stopped evaluation (or ``--add ADDITION``) is saved: beside its results, but under runs/
    for published results (model_cards/ is pushed to the Hub)."""
    prefix = f"{addition}." if addition else ""
    if publish:
        return Path("runs") / "evaluate" / Path(model).name / f"{prefix}state.safetensors"
    return out.with_name(f"{out.stem}.{prefix}state.safetensors")


PLACEHOLDERS = {"--data-dir": "DIR", "--out": "OUT", "--state": "STATE"}
NOT_RECORDED = {
    "--resume": False,
    "--max-minutes": True,
}  # how a run went, not what it measured: flag -> takes a value


def _without_paths(argv: list[str], model_folder: str | None = None) -> list[str]:
    """The command line as recorded in results: the data directory is ``DIR``, an output path
    ``OUT``, a state file ``STATE`` and ``model_folder`` (a model given as a folder) ``MODEL_DIR``
    (the results name the model, data set and split themselves), so no machine path is published;
    ``--resume`` and ``--max-minutes`` are left out (they do not change the figures). The evaluate
    parser takes no abbreviated flags, so these are the only spellings."""
    recorded: list[str] = []
    args = iter(argv)
    for arg in args:
        if model_folder is not None and arg == model_folder:
            recorded.append("MODEL_DIR")
            continue
        flag, has_value, _ = arg.partition("=")
        if flag in NOT_RECORDED:
            if NOT_RECORDED[flag] and not has_value:
                next(args, None)
            continue
        if flag in PLACEHOLDERS:
            recorded.append(f"{flag}={PLACEHOLDERS[flag]}" if has_value else arg)
            if not has_value and next(args, None) is not None:
                recorded.append(PLACEHOLDERS[flag])
            continue
        recorded.append(arg)
    return recorded


def _own_model_folder(model: str) -> Path | None:
    """``model`` as a folder of one's own (not one of the checkout's published ``model_cards/``),
    else None."""
    from .hub import checkout_root

    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    published = (checkout_root() / "model_cards").resolve()
    return None if folder.resolve().parent == published else folder


def _folder_card(folder: Path, results: dict) -> None:
    """Rewrite ``folder/README.md`` from its config.json and ``results``."""
    from .cards import entry_from_config, render_card
    from .folder import CARD_NAME, atomic_write_text, read_config

    config = read_config(folder)
    atomic_write_text(folder / CARD_NAME, render_card(entry_from_config(config), results, config))


def _diffroar(args: argparse.Namespace) -> int:
    import logging

    from .diffroar import check_same_weights, measure_model, merge_into_results
    from .hub import RESULTS_NAME, model_card_dir
    from .registry import get_entry, list_models

    is_zoo_name = args.model in list_models(pretrained=False)
    if args.publish and not is_zoo_name:
        raise ValueError(f"--publish writes a zoo model's card; {args.model!r} is not a zoo name")
    if args.publish:  # refuse before the hour of work, not after it
        check_same_weights(model_card_dir(args.model) / RESULTS_NAME, get_entry(args.model).sha256)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run_dir = Path(args.out) if args.out else Path("runs") / "diffroar" / Path(args.model).name
    flags = [f"--device {args.device}"] * bool(args.device) + ["--publish"] * args.publish
    command = " ".join(
        ["lga-zoo diffroar", args.model if is_zoo_name else "MODEL_DIR", "--data-dir DIR", *flags]
    )
    section = measure_model(args.model, args.data_dir, run_dir, device=args.device, command=command)
    for k, row in section["k"].items():
        print(f"k={k}%: top {row['top']:.2%}, bottom {row['bottom']:.2%}, DiffROAR {row['diffroar']:+.2%}")
    print(f"results in {run_dir / 'diffroar.json'}")
    if not args.publish:
        print(
            "published files unchanged (add --publish to merge into model_cards/NAME/results.json and the card)"
        )
        return 0
    merge_into_results(model_card_dir(args.model) / RESULTS_NAME, section)
    return _card(argparse.Namespace(name=args.model, results=None))


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_from_args

    return run_from_args(args)


def _leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import leaderboard_markdown

    if args.plot is None:
        columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
        print(leaderboard_markdown(columns), end="")
        return 0
    from .frontier import frontier_points, plot_frontier
    from .hub import checkout_root

    model_cards = Path(args.model_cards) if args.model_cards else checkout_root() / "model_cards"
    if not (model_cards / args.family).is_dir():
        raise ValueError(
            f"no model folder {args.family!r} under {model_cards}; --family names a standard model"
        )
    points = frontier_points(model_cards, args.family)
    path = plot_frontier(points, args.plot)
    print(f"wrote {path}: {len(points)} models of the {args.family} family")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train import run_from_args

    run_from_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lga-zoo", description="Robust-interpretation model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="write attribution overlays for images")
    p.add_argument("images", nargs="+", help="image files (jpg, png, ...)")
    p.add_argument("--model", required=True, help="zoo name, model folder, or hf-hub:org/name@rev")
    p.add_argument("--method", default="grad", help="grad, input_x_grad, ig, smoothgrad, boundary")
    p.add_argument("--out", default="explanations", help="a .png file (one image) or a folder")
    p.add_argument("--target", help="class name or index to explain (default: the prediction)")
    p.add_argument("--normalize", default="max", choices=["max", "sum", "none"])
    p.add_argument("--steps", type=int, help="integration steps for ig and boundary")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--stability",
        action="store_true",
        help="also score the map's stability (top-k intersection under noise and a 20-step attack)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stability noise and attack")
    p.set_defaults(func=_explain)

    p = sub.add_parser("compare", help="draw several models' maps before and after an attack")
    p.add_argument("image", help="an image file")
    p.add_argument("--models", required=True, help="comma-separated zoo names or model folders")
    p.add_argument("--attack", default="targeted", choices=["targeted", "topk", "noise"])
    p.add_argument("--method", default="grad", help="grad, input_x_grad, ig, smoothgrad, boundary")
    p.add_argument("--steps", type=int, default=100, help="attack steps (default 100, as in the evaluation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="compare.png", help="PNG file to write")
    p.set_defaults(func=_compare)

    p = sub.add_parser("list", help="the zoo as a table")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*lga*'")
    p.add_argument("--all", action="store_true", help="include models without published weights")
    p.set_defaults(func=_list)

    p = sub.add_parser("card", help="write model_cards/NAME/README.md from the registry and results.json")
    p.add_argument("name")
    p.add_argument("--results", help="results JSON (default model_cards/NAME/results.json)")
    p.set_defaults(func=_card)

    p = sub.add_parser("publish", help="copy a trained model folder into model_cards/NAME and pin its sha256")
    p.add_argument("name")
    p.add_argument(
        "--from", dest="source", required=True, help="the run's model folder (lga-zoo train's OUT)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="store the weights as trained (float32) or in half precision (float16: half the size; "
        "loading casts them back to float32, and an evaluation after publishing measures the stored weights)",
    )
    p.set_defaults(func=_publish)

    p = sub.add_parser("push", help="upload model_cards/NAME, or a model folder, to the Hugging Face Hub")
    p.add_argument("name", help="zoo name (uploads model_cards/NAME) or a model folder (lga-zoo train's OUT)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--folder", help="folder to push (default model_cards/NAME)")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--pin", action="store_true", help="pin the new commit as the registry's revision")
    p.set_defaults(func=_push)

    p = sub.add_parser("download", help="fetch a model into the Hugging Face cache, verified")
    p.add_argument("name", help="zoo name or hf-hub:ORG/NAME[@revision]")
    p.add_argument("--revision")
    p.add_argument("--cache-dir")
    p.set_defaults(func=_download)

    p = sub.add_parser(
        "evaluate", help="accuracy and attribution robustness into a results JSON", allow_abbrev=False
    )
    p.add_argument("model", help="zoo name or model folder (lga-zoo train's OUT)")
    p.add_argument(
        "--data-dir", required=True, help="the model's data set (any layout lga-zoo train accepts)"
    )
    p.add_argument("--split", help="split to measure (default: test for CIFAR-10, val or test for folders)")
    p.add_argument(
        "--n-images",
        type=positive_int,
        help=f"images for robustness, PGD and APGD (default {DEFAULT_N_IMAGES}; with --add: the results')",
    )
    p.add_argument(
        "--n-accuracy", type=positive_int, help="images for clean accuracy (default: the whole split)"
    )
    p.add_argument(
        "--n-images-slow",
        type=positive_int,
        help="images for ig, smoothgrad and boundary (the first of the --n-images; default: all of them)",
    )
    p.add_argument(
        "--methods", default="grad,ig", help="comma-separated: grad,input_x_grad,ig,smoothgrad,boundary"
    )
    p.add_argument(
        "--attacks",
        default="random,targeted,topk,pgd",
        help="comma-separated: random,targeted,topk,pgd,apgd (default: all but apgd; apgd: AutoAttack's "
        "APGD-CE then APGD-T, torchattacks, fp32, at the PGD radii; needs "
        "`pip install --no-deps torchattacks==3.5.1`)",
    )
    p.add_argument(
        "--eps", type=fraction, default=4 / 255, help="L-inf radius of the perturbations, pixels in [0, 1]"
    )
    p.add_argument("--attack-steps", type=positive_int, default=100)
    p.add_argument("--random-draws", type=positive_int, default=5)
    p.add_argument(
        "--softplus-beta",
        type=positive_float,
        default=20.0,
        help="Softplus beta replacing ReLU during the attacks",
    )
    p.add_argument(
        "--attack-map",
        default="same",
        choices=["same", "grad"],
        help="attack each method's own map, or the gradient map for all (cheaper for ig)",
    )
    p.add_argument(
        "--attack-amp",
        default="none",
        choices=["none", "bf16"],
        help="run the attacks (not the maps) under bf16 autocast "
        "(benchmarks/evaluate_precision.py compares its figures and time with fp32)",
    )
    p.add_argument(
        "--apgd-steps", type=positive_int, default=50, help="steps of APGD-CE and of APGD-T (default 50)"
    )
    p.add_argument(
        "--apgd-targets",
        type=positive_int,
        default=3,
        help="APGD-T's target classes, the most likely wrong ones (default 3; AutoAttack: 9 on CIFAR-10)",
    )
    p.add_argument(
        "--add",
        choices=["apgd", "quantus"],
        help="measure only this on the robustness images of the existing results (the --out, --publish or "
        "default results JSON; same weights, data, seed), and merge it in: no other figure is measured again "
        "(quantus: Max-Sensitivity, Local Lipschitz Estimate, Relative Input Stability and ROAD of the grad "
        'maps by Quantus 0.6.0, on the first --quantus-images; needs pip install -e ".[eval]")',
    )
    p.add_argument(
        "--quantus-images",
        type=positive_int,
        default=200,
        help="with --add quantus: the first this many robustness images (default 200)",
    )
    p.add_argument(
        "--quantus-samples",
        type=positive_int,
        default=QUANTUS_SAMPLES,
        help=f"with --add quantus: noise draws per image of each robustness score (default {QUANTUS_SAMPLES})",
    )
    p.add_argument("--seed", type=int, help="default 0; with --add: the results'")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", help="results JSON (default runs/evaluate/NAME/results.json)")
    p.add_argument(
        "--state",
        help="what is measured so far, saved after every batch (default: runs/evaluate/NAME/state.safetensors, "
        "or beside --out); removed when the evaluation completes",
    )
    p.add_argument("--resume", action="store_true", help="continue the stopped evaluation saved in --state")
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        help="stop after the batch that passes this time (exit code 3); continue later with --resume",
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="write model_cards/NAME/results.json, refresh its family's cards, zoo.json's metrics and the "
        "README's zoo table (zoo names only)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate, record_argv=True)

    p = sub.add_parser(
        "diffroar", help="DiffROAR faithfulness of a model's grad maps (retrains on masked CIFAR-10)"
    )
    p.add_argument("model", help="zoo name or model folder (a CIFAR-10 model)")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 (any layout lga-zoo train accepts)")
    p.add_argument("--out", help="run folder, resumable (default runs/diffroar/NAME)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="merge faithfulness.diffroar into model_cards/NAME/results.json (same weights only) and redraw the card",
    )
    p.set_defaults(func=_diffroar)

    p = sub.add_parser("demo", help="start the Gradio demo app (needs the demo extra)")
    add_demo_arguments(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "leaderboard",
        help="the zoo's results as a Markdown table (the README's zoo table), or --plot the frontier",
    )
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the family's accuracy-robustness frontier into FILE (.png) from its published results.json files",
    )
    p.add_argument(
        "--family",
        default="resnet18_cifar10_standard",
        help="with --plot: the standard model whose fine-tunes are drawn (default resnet18_cifar10_standard)",
    )
    p.add_argument(
        "--model-cards",
        help="with --plot: the folder of model folders (default: the checkout's model_cards/)",
    )
    p.add_argument(
        "--columns",
        help="comma-separated metric columns instead of the default ones: 'default' (the README's), "
        "accuracy, robust_linf, pgd_linf, apgd_linf, quantus/max_sensitivity, quantus/local_lipschitz_estimate, "
        "quantus/relative_input_stability, quantus/road, or any METHOD/ATTACK/METRIC key of zoo.json's metrics",
    )
    p.set_defaults(func=_leaderboard)

    p = sub.add_parser("train", help="train a recipe (torchrun -m lga_zoo.train for several GPUs)")
    add_train_arguments(p)
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError, KeyError, TypeError) as err:
        print(f"lga-zoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # a command run under torchrun started a process group
            from .distributed import leave_process_group

            leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
