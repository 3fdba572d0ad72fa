"""The advice as text: what `headstart advise` prints (``--json`` prints the record itself)."""

from __future__ import annotations

from typing import Any

from headstart.advise.plan import tap_words

__all__ = ["advice_text"]


def advice_text(a: dict[str, Any]) -> str:
    """Facts, the per-tap table, ImageNet's view and the plan, in that order (the plan's reasons last, where
    the eye lands)."""
    f, p, t = a["facts"], a["plan"], a["timing"]
    size = f["image_size"]
    source = "the test/ folder" if f["test_source"] == "folder" else f["test_source"]
    lines = [(f"{a['data']}: {len(f['classes'])} classes, {f['images']} images read; "
              f"{f['test_images']} held out as fit's test split ({source}) and not read"), "",
             "data",
             (f"  images/class   min {f['per_class_min']}, median {f['per_class_median']:g}, "
              f"max {max(f['per_class'].values())} (largest/smallest {f['imbalance']:.1f}x)")]
    if size.get("sampled"):
        lines.append(f"  image size     median {size['median_width']}x{size['median_height']}, shortest side "
                     f">= {size['short_side_min']}, most common {size['most_common']} "
                     f"({100 * size['most_common_share']:.0f}% of {size['sampled']} sampled)")
    lines.append(f"  files          {len(f['undecodable'])} undecodable; {f['duplicates_within']} duplicate(s) in "
                 f"train ({f['duplicates_conflicting']} with conflicting labels); {f['duplicates_across_splits']} "
                 "test image(s) identical to training images")
    if (near := f.get("near_duplicates_within")) is not None:
        lines.append(f"  near-copies    {near} pair(s) of images read are the same picture re-encoded or resized "
                     f"({f.get('near_duplicates_conflicting', 0)} with different labels)")
    lines.append(f"  size cue       {f['size_cue'] or 'none: image size does not tell the class'}")
    folds = a["taps"][0]["probe_folds"] if a["taps"] else "-"
    lines += ["", f"transferability (ridge probe, {folds.replace('x', '-fold x ')} repeats; LogME per sample)",
              f"  {'tap':<8} {'dim':>5} {'probe':>7} {'+-se':>5} {'LogME':>8}"]
    for row in a["taps"]:
        mark = ("  <- chosen" if row["tap"] == a["chosen_tap"] else "") + \
               ("  (best mean)" if row["tap"] == a["best_tap"] and row["tap"] != a["chosen_tap"] else "")
        lines.append(f"  {row['tap']:<8} {row['dim']:>5} {100 * row['probe_accuracy']:>6.1f}% "
                     f"{100 * row['probe_se']:>5.1f} {row['logme']:>8.3f}{mark}")
    im = a["imagenet"]
    lines += ["", (f"ImageNet's head: mean confidence {im['mean_max_softmax']:.2f}; its top-1 class explains "
                   f"{100 * im['nce_normalized']:.0f}% of the labels' entropy (NCE {im['nce']:.3f})")]
    if "top_imagenet_class" in im:
        seen = ", ".join(f"{c} -> {v['label']} ({100 * v['share']:.0f}%)" for c, v in im["top_imagenet_class"].items())
        lines.append(f"  most frequent ImageNet class per class: {seen}")
    if shift := a.get("bn_shift"):
        worst = max(shift, key=lambda r: r["kl"])
        took = t.get("bn_shift_s", 0)
        lines += ["", (f"BatchNorm inputs vs ImageNet's running statistics (KL per channel, {took:.0f}s): "
                       + ", ".join(f"{r['stage']} {r['kl']:.2f}" for r in shift)),
                  f"  departs most at {worst['stage']} (natural photos such as intel_scenes_small's measure 0.02 at "
                  "the stem, under 0.2 everywhere; brain MRI scans 0.75 at the stem)"]
    lines += ["", f"plan: {p['summary']}"]
    lines += [f"  - {e}" for e in p["evidence"]]
    lines += [f"  caution: {c}" for c in p["cautions"]]
    lines += [f"  run:       {p['command']}", f"  runner-up: {p['runner_up']['command']}",
              (f"  ({tap_words(a['chosen_tap'])} chosen; took {t['extract_s'] + t['score_s']:.1f}s: "
               f"codes and facts {t['extract_s']:.1f}s, {t['cached_images']} images from the cache; "
               f"scores {t['score_s']:.1f}s)")]
    return "\n".join(lines)
