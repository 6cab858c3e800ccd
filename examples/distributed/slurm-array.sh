#!/bin/bash
# Static sharding without a queue server on SLURM: a job array of 16 tasks, each predicting every 16th slide of the
# sorted list. Submit with: sbatch examples/distributed/slurm-array.sh
#SBATCH --job-name=tessera-predict
#SBATCH --array=0-15
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=logs/tessera-%A_%a.log
set -euo pipefail
# Slides, model and outputs on storage every node mounts at the same path. --resume continues a slide a pre-empted
# task left half done.
npx tessera predict /shared/slides --model /shared/models/he-nuclei --out /shared/results/study \
  --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" --workers "${SLURM_CPUS_PER_TASK}" --resume
