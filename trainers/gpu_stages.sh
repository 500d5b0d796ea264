# Sourced by the GPU stage scripts (gpu_pipeline.sh, gpu_baselines.sh, gpu_speed_topics.sh, gpu_train_speed.sh):
# a stage runs unless $W holds its done-marker, so a script run again after a call's time limit resumes.
#   if stage NAME; then ...; mark NAME; fi
stage() { [ -f "$W/done.$1" ] && echo "== $1: done" && return 1; echo "== $1 ($(date +%T))"; }
mark() { touch "$W/done.$1"; }
