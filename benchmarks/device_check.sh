#!/usr/bin/env bash
# The GPU check: the cuda path of this repository in one short script (under 5 minutes on one GPU).
#
#     bash benchmarks/device_check.sh                              # outputs under $OUT, else a new temporary directory
#     DEVICE_CHECK_TARGET=cpu bash benchmarks/device_check.sh      # rehearse every step on cpu, at small sizes
#
# Steps, each logged to <outputs>/<step>.log:
#   nvidia-smi;
#   the cuda tests (pytest -k cuda), the resume test (an interrupted run resumed ends as the whole run) on its own;
#   a demo training on cuda against the same training on cpu, dropout off (with dropout the two
#     devices draw different masks, so only arithmetic may differ): the same selected epoch and
#     test weighted-F1 within a point;
#   benchmarks/speed.py on cuda in fp32 and with --amp=True (bf16 autocast);
#   text-encoder fine-tuning throughput, ours against the plain loop (benchmarks/extraction_speed.py);
#   a run on cuda continued with --resume.
# Without a cuda device the cuda steps say SKIP and the cpu half of the demo comparison still runs.
# It ends with one PASS / SKIP / FAIL line per step and exits non-zero on any FAIL.
set -u
cd "$(dirname "$0")/.."

target=${DEVICE_CHECK_TARGET:-cuda}
if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then has_cuda=1; else has_cuda=0; fi
rehearsal=0
if [ "$target" = cpu ]; then rehearsal=1; fi
runs_on_target=$(( has_cuda || rehearsal ))                           # 1: the cuda steps run (on $target)
epochs=${DEVICE_CHECK_EPOCHS:-$([ "$has_cuda" = 1 ] && echo 6 || echo 3)}
mkdir -p "${OUT:-${TMPDIR:-/tmp}}"
work=$(mktemp -d "${OUT:-${TMPDIR:-/tmp}}/device_check.XXXXXX")    # a new directory: nothing earlier is overwritten
summary=()
failed=0

record() {  # record STATUS STEP DETAIL
    summary+=("$(printf '%-4s  %-22s %s' "$1" "$2" "$3")")
    if [ "$1" = FAIL ]; then failed=1; fi
}

verdict() {  # verdict "PASS ...": PASS when a checker's line starts with PASS, else FAIL (a checker that crashed too)
    if [ "${1%% *}" = PASS ]; then echo PASS; else echo FAIL; fi
}

logged() {  # logged STEP SECONDS COMMAND...: run COMMAND with a time limit, output to STEP.log; its exit status
    local step=$1 seconds=$2
    shift 2
    echo "== $step: $*"
    timeout "$seconds" "$@" >"$work/$step.log" 2>&1
    local status=$?
    if [ "$status" != 0 ]; then
        echo "   exit status $status$([ "$status" = 124 ] && echo " (over ${seconds}s)"); end of $work/$step.log:"
        tail -n 15 "$work/$step.log" | sed 's/^/   | /'
    fi
    return "$status"
}

no_cuda="no cuda device on this machine: not run"
python3 - <<'EOF' | tee "$work/environment.log"
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
EOF
echo "target: $target$([ "$rehearsal" = 1 ] && echo " (rehearsal on cpu)"); outputs: $work"

# ------------------------------------------------------------------ nvidia-smi
if command -v nvidia-smi >/dev/null 2>&1; then
    if logged nvidia-smi 60 nvidia-smi; then
        cat "$work/nvidia-smi.log"
        record PASS nvidia-smi "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
    else
        record FAIL nvidia-smi "see $work/nvidia-smi.log"
    fi
else
    record SKIP nvidia-smi "not installed: no NVIDIA driver on this machine"
fi

# ------------------------------------------------------------------ the cuda tests
if [ "$runs_on_target" = 1 ]; then
    if logged cuda-tests 180 python3 -m pytest -q -rs -k "cuda and not resumed_run" tests; then
        result=$(tail -n 1 "$work/cuda-tests.log")
        if [ "$has_cuda" = 1 ] && ! grep -q "passed" <<<"$result"; then
            record FAIL "cuda tests" "none ran on a cuda machine: $result"
        else
            record PASS "cuda tests" "$result"
        fi
    else
        record FAIL "cuda tests" "$(tail -n 1 "$work/cuda-tests.log")"
    fi
else
    record SKIP "cuda tests" "$no_cuda"
fi

# ------------------------------------------------------------------ the resume test on cuda: exact, no expected failure
if [ "$runs_on_target" = 1 ]; then
    if logged resume-test 180 python3 -m pytest -q -rs -k "resumed_run and cuda" tests/test_robustness.py; then
        result=$(tail -n 1 "$work/resume-test.log")
        if [ "$has_cuda" = 1 ] && ! grep -q "2 passed" <<<"$result"; then
            record FAIL "resume test on cuda" "expected 2 passed: $result"
        else
            record PASS "resume test on cuda" "$result"
        fi
    else
        record FAIL "resume test on cuda" "$(tail -n 1 "$work/resume-test.log")"
    fi
else
    record SKIP "resume test on cuda" "$no_cuda"
fi

# ------------------------------------------------------------------ demo training: cpu, and the target against it
read -ra no_dropout <<<"$(python3 -c "import train_MALN; print(' '.join(f'--{k}=0' for k in train_MALN.HYPERPARAMETERS if k.endswith('dropout')))")"
demo=(--preset=demo "--epochs=$epochs" --export_features=False "--out_dir=$work/runs" "${no_dropout[@]}")
describe_run() {  # describe_run RUN: selected epoch and test weighted-F1 of a finished run
    python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print(f\"selected epoch {m['best_epoch']}, test wF1 {m['test_weighted_f1']:.2f}\")" \
        "$work/runs/$1/metrics.json"
}
if logged demo-cpu 120 python3 train_MALN.py "${demo[@]}" --device=cpu --run_name=demo_cpu; then
    record PASS "demo on cpu" "$epochs epochs, dropout off: $(describe_run demo_cpu)"
    if [ "$runs_on_target" = 1 ]; then
        if logged "demo-target-$target" 120 python3 train_MALN.py "${demo[@]}" "--device=$target" "--run_name=demo_target_$target"; then
            comparison=$(python3 - "$work/runs/demo_cpu" "$work/runs/demo_target_$target" <<'EOF'
import json, os, sys
import pandas as pd
cpu, other = (json.load(open(os.path.join(run, "metrics.json"))) for run in sys.argv[1:])
gap = abs(cpu["test_weighted_f1"] - other["test_weighted_f1"])
same = cpu["best_epoch"] == other["best_epoch"] and gap <= 1.0
print(f"{'PASS' if same else 'FAIL'} selected epoch {other['best_epoch']} (cpu {cpu['best_epoch']}), "
      f"test wF1 {other['test_weighted_f1']:.2f} (cpu {cpu['test_weighted_f1']:.2f}, gap {gap:.2f}; at most 1 allowed)")
if not same:  # both runs epoch by epoch, to the terminal
    columns = ["train_loss", "valid_weighted_f1", "test_weighted_f1"]
    histories = [pd.read_csv(os.path.join(run, "history.csv")).set_index("epoch")[columns] for run in sys.argv[1:]]
    print(pd.concat(histories, axis=1, keys=["cpu", "target"]).round(3).to_string(), file=sys.stderr)
EOF
)
            record "$(verdict "$comparison")" "demo on $target vs cpu" "${comparison#* }"
        else
            record FAIL "demo on $target vs cpu" "the $target run failed: see $work/demo-target-$target.log"
        fi
    else
        record SKIP "demo on cuda vs cpu" "$no_cuda (the cpu half above ran)"
    fi
else
    record FAIL "demo on cpu" "see $work/demo-cpu.log"
fi

# ------------------------------------------------------------------ speed: fp32 and bf16 autocast
speed_size=()
if [ "$rehearsal" = 1 ]; then  # cpu at IEMOCAP's size takes minutes; the rehearsal checks the step, not the figures
    speed_size=(--epochs=1 --text_size=64 --audio_size=16 --visual_size=32 --train_dialogues=8 --train_utterances=300
                --test_dialogues=2 --test_utterances=60 --matmul_size=256)
fi
for amp in False True; do
    step="speed-$target$([ "$amp" = True ] && echo "-amp")"
    if [ "$runs_on_target" = 1 ]; then
        if logged "$step" 120 python3 -m benchmarks.speed "--device=$target" "--amp=$amp" "${speed_size[@]}"; then
            figures=$(awk -F'|' '/^\| (training|inference) /{gsub(/ /, ""); printf "%s %s utt/s, peak %s MiB, utilisation %s; ", $2, $3, $7, $9}' "$work/$step.log")
            record PASS "speed --amp=$amp" "$figures(table below)"
        else
            record FAIL "speed --amp=$amp" "see $work/$step.log"
        fi
    else
        record SKIP "speed --amp=$amp" "$no_cuda"
    fi
done

# ------------------------------------------------------------------ text-encoder fine-tuning: ours against the plain loop
# The GPU machine has no network: the text model must travel with the working tree (64 MiB at most). Before sending,
#     python3 -m benchmarks.extraction_speed --save_half=.text_model      # the packaged MiniLM in float16, 45 MB
# (.text_model in .git/info/exclude, named in the device run's carry); without it the packaged weights are used.
text_model=$([ -d .text_model ] && echo .text_model || echo "")
finetune_steps=$([ "$rehearsal" = 1 ] && echo 2 || echo 60)
if [ "$runs_on_target" = 1 ]; then
    rates=""
    for loop in ours plain; do
        if logged "finetune-$loop" 240 python3 -m benchmarks.extraction_speed --finetune=True "--loop=$loop" \
            "--steps=$finetune_steps" "--device=$target" "--text_model=$text_model"; then
            rates+="$loop $(grep -o '[0-9.]* training utterances per second' "$work/finetune-$loop.log" | cut -d' ' -f1) utt/s; "
        else
            rates+="$loop FAILED (see $work/finetune-$loop.log); "
        fi
    done
    record "$(grep -q FAILED <<<"$rates" && echo FAIL || echo PASS)" "fine-tuning speed" "$rates"
else
    record SKIP "fine-tuning speed" "$no_cuda"
fi

# ------------------------------------------------------------------ a run on the target, continued with --resume
if [ "$runs_on_target" = 1 ]; then
    # constant learning rate: --resume may extend such a run (a cosine schedule is tied to its epoch count)
    small=(--preset=demo --export_features=False "--out_dir=$work/runs" --run_name=resume "--device=$target")
    if logged resume-first 90 python3 train_MALN.py "${small[@]}" --epochs=2 --lr_schedule=constant \
        && logged resume-second 90 python3 train_MALN.py "--resume=$work/runs/resume" --epochs=3; then
        resumed=$(python3 - "$work/runs/resume" "$target" <<'EOF'
import os, sys
import pandas as pd
import torch
run, target = sys.argv[1:]
last = torch.load(os.path.join(run, "last.pt"), map_location="cpu", weights_only=True)
rows = len(pd.read_csv(os.path.join(run, "history.csv")))
fine = rows == 3 and last["epoch"] == 3 and ("cuda" in last["rng"]) == (target != "cpu") and os.path.exists(os.path.join(run, "metrics.json"))
print(f"{'PASS' if fine else 'FAIL'} 2 epochs, then --resume to 3: history of {rows} epochs, last.pt at epoch {last['epoch']}, "
      f"RNG states saved: {', '.join(last['rng'])}")
EOF
)
        if grep -q "resuming after epoch 2" "$work/resume-second.log"; then
            record "$(verdict "$resumed")" "resume on $target" "${resumed#* }"
        else
            record FAIL "resume on $target" "the second run did not say 'resuming after epoch 2': see $work/resume-second.log"
        fi
    else
        record FAIL "resume on $target" "see $work/resume-first.log and $work/resume-second.log"
    fi
else
    record SKIP "resume on cuda" "$no_cuda"
fi

# ------------------------------------------------------------------ figures and summary
for log in "$work/speed-$target.log" "$work/speed-$target-amp.log"; do
    [ -e "$log" ] || continue
    echo
    echo "== $(basename "$log" .log)"
    grep -v '^\s*$' "$log" | tail -n 5
done
echo
echo "device check ($target$([ "$rehearsal" = 1 ] && echo ", rehearsal on cpu"); logs in $work):"
printf '%s\n' "${summary[@]}"
exit "$failed"
