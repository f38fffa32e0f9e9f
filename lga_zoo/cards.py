"""Model cards: ``model_cards/NAME/README.md`` from the registry entry and the results JSON.

The card opens with YAML front matter that the Hugging Face Hub reads (license, library_name,
tags, datasets, pipeline_tag, base_model, and ``model-index`` results with their settings), then
usage, the training recipe and command, the evaluation table with the command that made it,
limitations and citations. Every number in it comes from ``results.json``.
"""

from __future__ import annotations

from typing import Any

import yaml

from .frontier import strength_label
from .registry import ZooEntry

METRIC_NAMES = {
    "topk": "top-k intersection",
    "kendall": "Kendall tau",
    "spearman": "Spearman rho",
    "cosine": "cosine similarity",
    "pearson": "Pearson r",
    "ssim": "SSIM",
    "mse": "MSE",
}
CARD_METRICS = ("topk", "kendall", "spearman", "cosine")
DATASET_NAMES = {"cifar10": "CIFAR-10", "imagenet100": "ImageNet-100", "folder": "an image folder"}


def summary_metrics(results: dict[str, Any] | None) -> dict[str, float]:
    """The flat metrics a registry entry and the leaderboard carry: ``accuracy``, ``pgd_linf``,
    ``pgd_l2``, ``apgd_linf`` and ``apgd_l2`` (where measured) and ``METHOD/ATTACK/METRIC`` means,
    rounded to 4 digits, and ``n_robustness``, the number of test images the robustness figures were
    measured on."""
    if not results:
        return {}
    flat: dict[str, float] = {}
    if "n_robustness" in results.get("data", {}):
        flat["n_robustness"] = results["data"]["n_robustness"]
    accuracy = results.get("accuracy", {})
    if "clean" in accuracy:
        flat["accuracy"] = round(accuracy["clean"], 4)
    for attack in ("pgd", "apgd"):
        for norm, record in accuracy.get(attack, {}).items():
            if record.get("accuracy") is not None:
                flat[f"{attack}_{norm}"] = round(record["accuracy"], 4)
    for method, attacks in results.get("robustness", {}).items():
        for attack, metrics in attacks.items():
            for metric in CARD_METRICS:
                if metrics.get(metric, {}).get("mean") is not None:
                    flat[f"{method}/{attack}/{metric}"] = round(metrics[metric]["mean"], 4)
    for score, stat in results.get("quantus", {}).get("scores", {}).items():
        if stat.get("mean") is not None:  # 4 significant digits: Relative Input Stability runs to 1e5
            flat[f"quantus/{score}"] = float(f"{stat['mean']:.4g}")
    return flat


def _model_index(entry: ZooEntry, results: dict[str, Any]) -> list[dict[str, Any]]:
    data = results["data"]
    settings = results.get("settings", {})
    metrics: list[dict[str, Any]] = []
    accuracy = results.get("accuracy", {})
    if "clean" in accuracy:
        metrics.append(
            {"type": "accuracy", "name": "Top-1 accuracy", "value": round(accuracy["clean"] * 100, 2)}
        )
    for norm, record in accuracy.get("pgd", {}).items():
        metrics.append(
            {
                "type": "robust_accuracy",
                "name": f"PGD {norm} accuracy (eps {record['eps']:.4g}, {record['steps']} steps)",
                "value": round(record["accuracy"] * 100, 2),
            }
        )
    for norm, record in accuracy.get("apgd", {}).items():
        if record.get("accuracy") is not None:
            metrics.append(
                {
                    "type": "robust_accuracy",
                    "name": f"APGD {norm} accuracy (eps {record['eps']:.4g}, APGD-CE then APGD-T with "
                    f"{record.get('n_target_classes', '?')} targets, {record.get('steps', '?')} steps, fp32)",
                    "value": round(record["accuracy"] * 100, 2),
                }
            )
    for method, attacks in results.get("robustness", {}).items():
        for attack, values in attacks.items():
            for metric in CARD_METRICS:
                if values.get(metric, {}).get("mean") is not None:
                    metrics.append(
                        {
                            "type": f"attribution_{metric}",
                            "name": f"{method} map, {attack} perturbation: {METRIC_NAMES[metric]}",
                            "value": round(values[metric]["mean"], 4),
                        }
                    )
    dataset = {
        "name": data.get("name", DATASET_NAMES.get(entry.dataset, entry.dataset)),
        "type": entry.dataset,
        "split": data.get("split", "test"),
    }
    dataset_args = {
        k: settings[k] for k in ("eps", "attack_steps", "softplus_beta", "topk_fraction") if k in settings
    }
    if dataset_args:
        dataset["args"] = dataset_args
    return [
        {
            "name": entry.name,
            "results": [{"task": {"type": "image-classification"}, "dataset": dataset, "metrics": metrics}],
        }
    ]


def front_matter(entry: ZooEntry, results: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "license": entry.license,
        "library_name": "lga-zoo",
        "pipeline_tag": "image-classification",
        "tags": [
            "image-classification",
            "interpretability",
            "robust-interpretation",
            entry.method,
            entry.architecture,
            "pytorch",
            "timm",
            "safetensors",
        ],
    }
    if entry.dataset != "folder":  # a folder of one's own is no Hub data set
        meta["datasets"] = [entry.dataset]
    if entry.base_model:
        meta["base_model"] = entry.base_model
    if results:
        meta["model-index"] = _model_index(entry, results)
    return meta


def _load_name(entry: ZooEntry) -> str:
    """What ``lga_zoo.load`` takes for this model: a zoo name, or (a model of one's own, in no
    registry) its folder, by the name the card's folder has."""
    return entry.name if entry.hf_repo_id else f"path/to/{entry.name}"


def _own_model_hint(entry: ZooEntry) -> str:
    if entry.hf_repo_id:
        return ""
    return (
        f"`path/to/{entry.name}` is this folder. Once pushed (`lga-zoo push path/to/{entry.name} --repo-id "
        f'ORG/{entry.name}`), `lga_zoo.load("hf-hub:ORG/{entry.name}")` loads it from the Hub.\n\n'
    )


def _attack_activation(results: dict[str, Any], entry: ZooEntry) -> str:
    """As the results record it, else (results from before the record) from the model's activation:
    ``softplus_beta`` only replaces ReLUs."""
    if results.get("attack_activation"):
        return results["attack_activation"]
    beta = results.get("settings", {}).get("softplus_beta", 20.0)
    if entry.activation == "relu":
        return f"ReLU swapped for Softplus(beta={beta:g})"
    return f"the model's own Softplus(beta={entry.softplus_beta:g})"


def apgd_description(record: dict[str, Any]) -> str:
    """How an ``accuracy.apgd`` entry was measured: "eps 0.007843, APGD-CE then APGD-T with 3 target
    classes on the images left, 50 steps each, fp32, torchattacks 3.5.1"."""
    targets = record.get("n_target_classes", "?")
    return (
        f"eps {record['eps']:.4g}, APGD-CE then APGD-T with {targets} target class"
        f"{'' if targets == 1 else 'es'} on the images left, {record.get('steps', '?')} steps each, "
        f"{record.get('precision', 'fp32')}, {record.get('implementation', 'torchattacks')}"
    )


def _apgd_rows(results: dict[str, Any]) -> list[str]:
    """The evaluation table's APGD rows (robust fraction, Wilson 95% interval), and where the figures
    were added to an earlier evaluation, the command that added them."""
    rows = []
    for norm, record in results["accuracy"].get("apgd", {}).items():
        if record.get("accuracy") is None:
            continue
        interval = ""
        if record.get("ci95"):
            low, high = record["ci95"]
            interval = f" [{low:.2%}, {high:.2%}]"
        alone = record.get("accuracy_apgd_ce")
        after_ce = f"; APGD-CE alone {alone:.2%}" if alone is not None else ""
        rows.append(
            f"| APGD {norm} accuracy ({apgd_description(record)}, {record['n_images']} images) | "
            f"{record['accuracy']:.2%}{interval}{after_ce} |"
        )
    return rows


def _apgd_notes(results: dict[str, Any]) -> list[str]:
    if not results["accuracy"].get("apgd"):
        return []
    notes = [
        "",
        "APGD: AutoAttack's gradient part; an image counts as robust only if it is classified correctly after "
        "APGD-CE and after APGD-T (95% Wilson interval).",
    ]
    command = results.get("additions", {}).get("apgd", {}).get("command")
    if command:
        notes[-1] += f" Added to this evaluation on the same images by `{command}`."
    return notes


def _evaluation_section(results: dict[str, Any] | None, entry: ZooEntry) -> str:
    if not results:
        return "Not evaluated yet: run `lga-zoo evaluate NAME --data-dir DIR`, then `lga-zoo card NAME`.\n"
    data = results["data"]
    settings = results.get("settings", {})
    lines = [
        f"Data: {data['name']}, {data['split']} split; accuracy on {results['accuracy']['n_images']} images, "
        f"attribution robustness on {data.get('n_robustness', '?')} images; seed {results.get('seed')}.",
        "",
        f"Command: `{results.get('command', '?')}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | {results['accuracy']['clean']:.2%} |",
    ]
    for norm, record in results["accuracy"].get("pgd", {}).items():
        lines.append(
            f"| PGD {norm} accuracy (eps {record['eps']:.4g}, {record['steps']} steps, "
            f"{record['n_images']} images) | {record['accuracy']:.2%} |"
        )
    lines += _apgd_rows(results)
    lines += _apgd_notes(results)
    lines += [
        "",
        "Attribution robustness: similarity of the map at x and at the perturbed x' (mean and 95% interval).",
        f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}.",
        f"The attribution attacks differentiate the model with {_attack_activation(results, entry)}.",
        "",
        "| method | perturbation | " + " | ".join(METRIC_NAMES[m] for m in CARD_METRICS) + " |",
        "|---|---|" + "---|" * len(CARD_METRICS),
    ]
    for method, attacks in results.get("robustness", {}).items():
        for attack, values in attacks.items():
            cells = []
            for metric in CARD_METRICS:
                if metric in values:
                    cells.append(mean_and_interval(values[metric]))
                else:
                    cells.append("-")
            lines.append(f"| {method} | {attack} | " + " | ".join(cells) + " |")
    lines += _faithfulness_rows(results)
    lines += _quantus_rows(results)
    return "\n".join(lines) + "\n"


QUANTUS_NAMES = {
    "max_sensitivity": "Max-Sensitivity",
    "local_lipschitz_estimate": "Local Lipschitz Estimate",
    "relative_input_stability": "Relative Input Stability",
    "road": "ROAD: fraction of the removal steps with the prediction kept",
}


def quantus_value(stat: dict[str, Any]) -> str:
    """A Quantus score as "0.3214 [0.3101, 0.3327]" (4 significant digits), "-" without a mean."""
    if stat.get("mean") is None:
        return "-"
    if not stat.get("ci95"):
        return f"{stat['mean']:.4g} ({stat.get('n', '?')} images, no interval)"
    low, high = stat["ci95"]
    return f"{stat['mean']:.4g} [{low:.4g}, {high:.4g}]"


def _quantus_rows(results: dict[str, Any]) -> list[str]:
    """The card's Quantus block (each score's mean and 95% interval, the parameters, the ROAD curve), or
    nothing when ``results`` hold no ``quantus`` section."""
    section = results.get("quantus")
    if not section or not section.get("scores"):
        return []
    settings = section.get("settings", {})
    eps = settings.get("eps")
    eps_text = f"{eps:.4g} ({eps * 255:.3g}/255)" if isinstance(eps, (int, float)) else "?"
    method = settings.get("ci95_method", "t")
    lines = [
        "",
        f"Quantus scores of the grad map ({section.get('implementation', 'quantus')}; lower is better for each), on the "
        f"first {section.get('n_images', '?')} robustness images, mean and 95% {'Student-t' if method == 't' else method} interval.",
        f"Robustness: uniform noise in the L-inf ball of radius {eps_text} (pixels in [0, 1]), "
        f"{settings.get('nr_samples', '?')} draws per image, the maximum over them. ROAD (Rong et al. 2022, Quantus' "
        f"noisy linear imputation, noise {settings.get('road_noise', '?')}): the most relevant "
        f"{', '.join(str(p) for p in settings.get('road_percentages', []))}% of the pixels imputed.",
    ]
    command = results.get("additions", {}).get("quantus", {}).get("command")
    if command:
        lines.append(f"Added to this evaluation on the same images by `{command}`.")
    lines += ["", "| Quantus score | value |", "|---|---|"]
    for name, stat in section["scores"].items():
        lines.append(f"| {QUANTUS_NAMES.get(name, name)} | {quantus_value(stat)} |")
    curve = section["scores"].get("road", {}).get("curve")
    if curve:
        points = ", ".join(f"{p}%: {value:.1%}" for p, value in curve.items())
        lines += ["", f"ROAD curve, images whose prediction is kept after imputing the top pixels: {points}."]
    return lines


def _faithfulness_rows(results: dict[str, Any]) -> list[str]:
    """The card's Faithfulness block (DiffROAR per fraction of pixels kept, and the spread over the
    retrainer's seeds), or nothing when ``results`` hold no ``faithfulness.diffroar`` section."""
    diffroar = results.get("faithfulness", {}).get("diffroar")
    if not diffroar:
        return []
    recipe = diffroar["retrainer"]
    lines = [
        "",
        f"Faithfulness: {diffroar['method']} of the {diffroar['map']} map ({diffroar.get('map_target', '?')}). A fresh "
        f"`{recipe['architecture']}` is trained for {recipe['epochs']} epochs on the {diffroar['n_train']:,} train images",
        "keeping only the top-k% (or only the bottom-k%) pixels of each image's map, the others set to the train mean, and",
        f"tested on the {diffroar['n_test']:,} test images masked the same way. DiffROAR = top-k accuracy - bottom-k accuracy",
        "(points): the larger, the more the map puts first the pixels the task needs.",
        "",
        f"Command: `{diffroar.get('command', '?')}`",
        "",
        "| pixels kept (k) | top-k accuracy | bottom-k accuracy | DiffROAR |",
        "|---|---:|---:|---:|",
    ]
    for k, row in diffroar["k"].items():
        lines.append(f"| {k}% | {row['top']:.2%} | {row['bottom']:.2%} | {100 * row['diffroar']:+.2f} |")
    for key, values in diffroar.items():
        if key.startswith("seeds_at_") and len(values) > 1:
            each = ", ".join(f"{100 * v:+.2f}" for v in values)
            spread = 100 * (max(values) - min(values))
            lines += [
                "",
                f"At k = {key[len('seeds_at_') :]}%, {len(values)} retrainer seeds: DiffROAR {each} (spread {spread:.2f} points).",
            ]
    return lines


COMPARISON_COLUMNS = (
    ("grad", "random", "grad: noise"),
    ("grad", "targeted", "grad: targeted attack"),
    ("grad", "topk", "grad: top-k attack"),
    ("integrated_gradients", "targeted", "IG: targeted attack"),
)


def mean_and_interval(stat: dict[str, Any]) -> str:
    """A results.json statistic as "0.254 [0.249, 0.259]"; "0.254 (1 image, no interval)" where
    too few images gave no interval, "-" where none gave a mean."""
    if stat.get("mean") is None:
        return "-"
    if stat.get("ci95") is None:
        count = stat.get("n", "?")
        return f"{stat['mean']:.3f} ({count} image{'' if count == 1 else 's'}, no interval)"
    low, high = stat["ci95"]
    return f"{stat['mean']:.3f} [{low:.3f}, {high:.3f}]"


def family_of(entry: ZooEntry) -> list[ZooEntry]:
    """The models a card compares: the standard model a fine-tune starts from and every zoo model
    fine-tuned from it (control, Hessian, LGA, ...), the standard first."""
    from .registry import all_entries, get_entry

    root = entry.base_model.split("/")[-1] if entry.base_model else entry.name
    members = [e for e in all_entries() if e.base_model and e.base_model.split("/")[-1] == root]
    if not members:
        return []
    return [get_entry(root), *sorted(members, key=lambda e: e.name)]


def _images_measured(results: dict[str, Any]) -> str:
    """How many images the robustness figures of ``results`` rest on: "500" or "500 (IG 200)"."""
    n_images = results.get("data", {}).get("n_robustness", "?")
    ig = results.get("robustness", {}).get("integrated_gradients", {}).get("random", {}).get("topk", {})
    return f"{n_images} (IG {ig['n']})" if ig.get("n") not in (None, n_images) else str(n_images)


def training_length(config: dict[str, Any] | None) -> str:
    """How long a model's last training run was, from its config.json: "4 epochs over 50,000 images
    (1,560 steps of batch 128)"; "-" when the config does not say."""
    ours = (config or {}).get("lga_zoo", {})
    training = ours.get("training", {})
    epochs = training.get("epochs")
    images = ours.get("data", {}).get("train_images")
    batch = ours.get("recipe", {}).get("batch_size")
    if not epochs:
        return "-"
    length = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    if not (images and batch):
        return length
    steps = epochs * (images // training.get("world_size", 1) // batch)
    return f"{length} over {images:,} images ({steps:,} steps of batch {batch})"


def _published_config(name: str) -> dict[str, Any] | None:
    import json

    from .folder import CONFIG_NAME
    from .hub import model_card_dir

    path = model_card_dir(name) / CONFIG_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def comparison_section(
    entry: ZooEntry, family_results: dict[str, dict[str, Any]], config: dict[str, Any] | None = None
) -> str:
    """A table of the family's last training runs, accuracy and top-k intersections (95% intervals),
    from each model's config.json and results.json (``config``: this entry's, else the published
    one); models without results are listed as not evaluated yet, models without weights (other than
    ``entry`` itself) not at all."""
    family = [m for m in family_of(entry) if m.has_weights or m.name == entry.name]
    if len(family) < 2:
        return ""
    apgd_anywhere = any(
        (family_results.get(m.name) or {}).get("accuracy", {}).get("apgd", {}).get("linf") for m in family
    )
    robust_title = "L-inf robust acc." if apgd_anywhere else "PGD L-inf"
    header = (
        f"| model | regularizer | last run | images | accuracy | {robust_title} | "
        + " | ".join(t for *_, t in COMPARISON_COLUMNS)
        + " |"
    )
    lines = [
        "## Comparison",
        "",
        "The standard model and every model fine-tuned from it, with the same evaluation settings (top-k intersection of",
        "the map at x and at x', mean [95% interval]). `images`: the seeded test images each model was measured on",
        "(IG maps on the first of them); the first N are the same images for every model. `last run`: each model's",
        "last training run (for a fine-tune, its extra training). "
        + _control_sentence(family, family_results),
        "",
        header,
        "|---|---|---|---:|---:|---:|" + "---:|" * len(COMPARISON_COLUMNS),
    ]
    standard = family[0]
    starred_inits: list[str] = []  # per starred row, the sha256 of the standard weights it started from
    for member in family:
        name = f"**{member.name}**" if member.name == entry.name else member.name
        member_config = config if member.name == entry.name and config else _published_config(member.name)
        init_sha256 = _init_sha256(member_config)
        if (
            member is not standard
            and member.has_weights
            and standard.sha256
            and init_sha256 not in (None, standard.sha256)
        ):
            starred_inits.append(init_sha256)
            name += " *"
        run = training_length(member_config) if member.has_weights else "-"
        results = family_results.get(member.name)
        if not results:
            status = "not evaluated yet" if member.has_weights else "not published yet"
            lines.append(
                f"| {name} | {_regularizer_cell(member.regularizer)} | {run} | {status} | "
                + _training_accuracy(member_config)
                + " |" * (len(COMPARISON_COLUMNS) + 2)
            )
            continue
        accuracy = results["accuracy"]
        cells = [_images_measured(results), f"{accuracy['clean']:.2%}", _robust_cell(accuracy, apgd_anywhere)]
        for method, attack, _ in COMPARISON_COLUMNS:
            value = results.get("robustness", {}).get(method, {}).get(attack, {}).get("topk")
            cells.append("-" if value is None else mean_and_interval(value))
        lines.append(
            f"| {name} | {_regularizer_cell(member.regularizer)} | {run} | " + " | ".join(cells) + " |"
        )
    if apgd_anywhere:
        lines += [
            "",
            "L-inf robust acc.: APGD (AutoAttack's APGD-CE then APGD-T, fp32) where measured, else PGD "
            "(marked), at each model's L-inf radius.",
        ]
    if starred_inits:
        shas = ", ".join(f"{sha[:12]}..." for sha in sorted(set(starred_inits)))
        lines += [
            "",
            f"\\* Fine-tuned from earlier weights of {standard.name} (sha256 {shas}), not the published"
            f" ones (sha256 {standard.sha256[:12]}...): a starred row's gap to the {standard.name} row"
            " mixes what the fine-tune did with the standard model's later training; "
            + (
                "compare starred rows with each other."
                if len(starred_inits) > 1
                else "no other row started from those weights."
            ),
        ]
    return "\n".join(lines) + "\n\n"


def _robust_cell(accuracy: dict[str, Any], apgd_anywhere: bool) -> str:
    """The comparison's L-inf robust accuracy: PGD's where no model of the family has APGD; else APGD's,
    or PGD's marked "(PGD)" for a model without APGD."""
    apgd = accuracy.get("apgd", {}).get("linf") if apgd_anywhere else None
    if apgd and apgd.get("accuracy") is not None:
        return f"{apgd['accuracy']:.2%}"
    pgd = accuracy.get("pgd", {}).get("linf")
    if not pgd:
        return "-"
    return f"{pgd['accuracy']:.2%}" + (" (PGD)" if apgd_anywhere else "")


def _regularizer_cell(regularizer: dict[str, Any]) -> str:
    """The regularizer's name and its strength: "lga (lambda_l2=0.15)", "none"."""
    strength = strength_label(regularizer)
    return f"{regularizer['name']} ({strength})" if strength else regularizer["name"]


def _control_sentence(family: list[ZooEntry], family_results: dict[str, Any]) -> str:
    """What the table can tell apart: with an evaluated control, what a regularizer adds beyond more
    training; without one, not that."""
    if any(m.method == "control" and family_results.get(m.name) for m in family):
        return (
            "The control starts from the same model as the\nregularized fine-tunes and trains without a "
            "regularizer: the gap between a regularizer and a control that\ntrained at least as long is what "
            "the regularizer adds beyond more training."
        )
    return (
        "No control (the same extra training without a\nregularizer) is evaluated yet: a fine-tune's gap to "
        "the standard model mixes what its regularizer adds\nwith what the extra training adds."
    )


def _init_sha256(config: dict[str, Any] | None) -> str | None:
    """The sha256 of the weights a model's config.json says its training started from, if any."""
    return (config or {}).get("lga_zoo", {}).get("init", {}).get("sha256")


def _training_accuracy(config: dict[str, Any] | None) -> str:
    """The test accuracy a model's config.json records at the end of training, "-" if none."""
    accuracy = (config or {}).get("lga_zoo", {}).get("training", {}).get("final_test_acc")
    return "-" if accuracy is None else f"{accuracy:.2%} (training)"


def render_card(
    entry: ZooEntry,
    results: dict[str, Any] | None,
    config: dict[str, Any] | None = None,
    family_results: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The model card (README.md) text for ``entry`` with ``results`` (None: not evaluated yet) and,
    for a model with a family (standard, control, fine-tunes), the other models' ``family_results``
    by name for the comparison section."""
    meta = yaml.safe_dump(front_matter(entry, results), sort_keys=False, width=120)
    reg = ", ".join(f"{k}={v}" for k, v in entry.regularizer.items() if k != "name")
    training = (config or {}).get("lga_zoo", {}).get("training", {})
    data_name = (
        (config or {}).get("lga_zoo", {}).get("data", {}).get("name", DATASET_NAMES.get(entry.dataset))
    )
    base = f" It is fine-tuned from `{entry.base_model}`." if entry.base_model else ""
    trained = ""
    if training:
        trained = (
            f"Its last training run: {training_length(config)} on {training.get('world_size', 1)} "
            f"{training.get('device', '?')} process(es) (the commands above list every run); final "
            f"test accuracy in training "
            f"{training.get('final_test_acc', float('nan')):.2%}.\n\n"
        )
    papers = (
        "\n".join(f"- {p}" for p in entry.papers)
        or "- Joo et al., Towards More Robust Interpretation via Local Gradient Alignment, AAAI 2023 (the comparison this model belongs to)"
    )
    activation = (
        f"softplus (beta {entry.softplus_beta:g})" if entry.activation == "softplus" else entry.activation
    )
    note = f"Note: {entry.notes}\n\n" if entry.notes else ""
    if (config or {}).get("torch_dtype") == "float16":
        trained += (
            "The weights are stored in half precision (float16) and load as float32; every figure below "
            "was measured on the stored weights.\n\n"
        )
    return f"""---
{meta}---

# {entry.name}

A `{entry.architecture}` ({entry.num_params:,} parameters, {activation} activations) image classifier
for {DATASET_NAMES.get(entry.dataset, entry.dataset)} ({len(entry.classes)} classes, {entry.input_size[1]}x{entry.input_size[2]}
pixels), trained with the `{entry.regularizer["name"]}` regularizer{f" ({reg})" if reg else ""}.{base}
Part of [lga-zoo](https://github.com/lga-zoo/lga_zoo): classifiers whose explanations hold up under small input changes.

## Usage

```python
import lga_zoo

model = lga_zoo.load("{_load_name(entry)}")  # pixels in [0, 1]; normalization is inside the model
exp = model.explain(image, method="grad")  # PIL image, HWC array, CHW/BCHW tensor
exp.attribution  # (B, H, W) map, max-normalized
exp.overlay().save("heat.png")
```

```bash
lga-zoo explain photo.jpg --model {_load_name(entry)} --method ig --out heat.png
```

{_own_model_hint(entry)}Inputs are resized to {entry.input_size[1]}x{entry.input_size[2]} (mean {list(entry.mean)}, std {list(entry.std)} applied inside).
Classes: {", ".join(entry.classes)}.

## Training

{_training_commands(entry, data_name)}

{trained}{note}## Evaluation

{_evaluation_section(results, entry)}
{comparison_section(entry, {**(family_results or {}), **({entry.name: results} if results else {})}, config)}## Limitations

- Trained and evaluated on {data_name} only: {entry.input_size[1]}x{entry.input_size[2]} images of {len(entry.classes)} classes.
  A photo of anything else is still assigned one of these classes.
- Attribution robustness is measured against the perturbations listed above (random noise and gradient-based
  attacks within a small L-inf ball); other attacks or larger budgets may change maps more.
- Robust attributions are not a guarantee that the explanation is faithful to the model's reasoning.

## Citation

{papers}
"""


def _training_commands(entry: ZooEntry, data_name: str) -> str:
    """The recipe and the ``lga-zoo train`` commands that make ``entry``, one per stage."""
    from .hub import checkout_root
    from .recipe import training_chain

    try:
        chain = training_chain(entry.recipe, checkout_root())
    except (OSError, ValueError):  # a folder of one's own: its recipe is not in the checkout
        chain = [(entry.recipe, f"runs/{entry.name}")]
    stages = f", in {len(chain)} runs, each starting from the one before" if len(chain) > 1 else ""
    commands = "\n".join(f"lga-zoo train {recipe} --data-dir DIR --out {out}" for recipe, out in chain)
    return f"Recipe `{entry.recipe}` on {data_name}{stages}:\n\n```bash\n{commands}\n```"


def _base_model(init_record: dict[str, Any], init: str) -> str | None:
    """The Hub id a model of one's own was fine-tuned from, when there is one (timm weights or a zoo
    model); a local file or a folder of one's own has none."""
    weights = init_record.get("weights")
    if init == "pretrained" and isinstance(weights, str) and "/" in weights:
        return weights
    if init_record.get("zoo_name"):
        return f"lga-zoo/{init_record['zoo_name']}"
    return None


def entry_from_config(config: dict[str, Any], recipe_path: str | None = None) -> ZooEntry:
    """A registry-shaped description of a model folder of one's own (no zoo entry, no pins), for its
    card: everything comes from its ``config.json``."""
    ours = config.get("lga_zoo", {})
    recipe = ours.get("recipe", {})
    regularizer = ours.get("regularizer", {"name": "none"})
    cfg = config["pretrained_cfg"]
    labels = config.get("label_names") or [str(i) for i in range(config["num_classes"])]
    num_params = ours.get("num_params")
    if num_params is None:
        from .folder import model_from_config

        num_params = sum(p.numel() for p in model_from_config(config).backbone.parameters())
    init = recipe.get("init", "scratch")
    return ZooEntry(
        name=ours.get("name", "model"),
        architecture=config["architecture"],
        dataset=recipe.get("dataset", "cifar10"),
        method=regularizer.get("name", "none"),
        regularizer=regularizer,
        recipe=recipe_path or f"{ours.get('name', 'recipe')}.yaml",
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        input_size=tuple(cfg["input_size"]),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=cfg.get("crop_pct", 1.0),
        classes=tuple(labels),
        activation=ours.get("activation", "relu"),
        softplus_beta=ours.get("softplus_beta", 20.0),
        num_params=num_params,
        license="apache-2.0",
        papers=("Joo et al., Towards More Robust Interpretation via Local Gradient Alignment, AAAI 2023",),
        hf_repo_id="",
        base_model=_base_model(ours.get("init", {}), init),
    )


def published_family_results(entry: ZooEntry) -> dict[str, dict[str, Any]]:
    """The results.json of every other member of ``entry``'s family found in ``model_cards/``."""
    import json

    from .hub import RESULTS_NAME, model_card_dir

    found = {}
    for member in family_of(entry):
        path = model_card_dir(member.name) / RESULTS_NAME
        if member.name != entry.name and path.is_file():
            found[member.name] = json.loads(path.read_text())
    return found
