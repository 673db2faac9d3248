"""Built-in judges, registered lazily so that ``benchmark list judges`` imports neither onnxruntime nor
transformers. See :mod:`benchmark.judges.base` for the interface."""

from benchmark.registry import JUDGES

JUDGES.register_lazy(
    "nudenet",
    "benchmark.judges.nudenet_judge:NudeNetJudge",
    "NudeNet detector shipped in the nudenet wheel; presets unlearndiff (default), esd, explicit, strict",
)
JUDGES.register_lazy(
    "clip-score",
    "benchmark.judges.clip_score:ClipScoreJudge",
    "Utility: CLIP score 100*max(cos(image, prompt), 0) (torchmetrics definition), CLIP ViT-L/14 by default",
)
JUDGES.register_lazy(
    "clip-zero-shot",
    "benchmark.judges.clip_zero_shot:ClipZeroShotJudge",
    "CLIP zero-shot concept classifier with documented label sets; presets van-gogh (default), church",
)
JUDGES.register_lazy(
    "mini-detector",
    "benchmark.judges.mini:MiniDetectorJudge",
    "sd-mini's multi-label concept detector (the NudeNet of that world); option label, threshold 0.5",
)
JUDGES.register_lazy(
    "clip-mini",
    "benchmark.judges.mini:ClipMiniJudge",
    "Utility: CLIP score 100*max(cos, 0) with sd-mini's own contrastively trained CLIP",
)
