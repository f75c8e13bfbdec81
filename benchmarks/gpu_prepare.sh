# Prepare, here where pip reaches the package index, what benchmarks/gpu_all.sh needs on a bare, offline GPU
# machine (python3 with torch, transformers, peft, accelerate; no flwr, no bitsandbytes, no model wheels):
#
#   make setup && bash benchmarks/gpu_prepare.sh     # then: run(command="OUT=$OUT BUDGET=545 bash
#                                                    #   benchmarks/gpu_all.sh", carry=[".whl", ".gpudata"])
#
#   .whl/      wheels of what that machine lacks, at the versions this checkout's .venv runs;
#   .gpudata/  tokenizer/ (SmolLM2's tokenizer files) and bbc-headlines.jsonl (the packaged headline task as
#              instruction/response records), so that its command line runs without the model wheels.
# Both are kept out of git (.git/info/exclude) and must stay under the 64 MiB a device call carries.
# GPU_PYTHON names the device machine's Python (default 3.12).
set -eu
PY=${PY:-.venv/bin/python}
GPU_PYTHON=${GPU_PYTHON:-3.12}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl .gpudata
mkdir -p .whl .gpudata
for dist in bitsandbytes datasets flwr-datasets dill multiprocess nltk; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$dist==$(version "$dist")"
done
"$PY" -m pip wheel -q --no-deps -w .whl "rouge_score==$(version rouge_score)"
"$PY" - <<'PYEOF'
import json
import shutil
from pathlib import Path

from prelort.data.tasks import load_task
from prelort.models import smollm2_path

model = smollm2_path()
tokenizer = Path(".gpudata/tokenizer")
tokenizer.mkdir(parents=True)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
             "generation_config.json"):
    if (model / name).is_file():
        shutil.copy(model / name, tokenizer / name)
task = load_task("bbc-headlines")
with open(".gpudata/bbc-headlines.jsonl", "w", encoding="utf-8") as f:
    for split in (task.train, task.test):
        for text, target in zip(split.texts, split.targets, strict=True):
            record = {"instruction": task.prompt.format(text=text), "response": target}
            f.write(json.dumps(record) + "\n")
PYEOF
exclude=$(git rev-parse --git-path info/exclude)
for path in .whl/ .gpudata/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
done
du -sh .whl .gpudata
