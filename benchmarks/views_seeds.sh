#!/bin/bash
# Accuracy over seeds: pretrain + finetune ssv2/charades with seed <seed>, evaluated with 3 and 4 temporal views.
# usage: benchmarks/views_seeds.sh <tree with shards/ from a dvc repro> <seed> <workdir>   (results: benchmarks/results/views_seeds.json)
set -e
tree=$1; s=$2; w=$3; mkdir -p $w; cd $tree
export PATH=$tree/.venv/bin:$PATH PREFECT_SERVER_ANALYTICS_ENABLED=false
python3 - <<PY
import yaml
p=yaml.safe_load(open('params.yaml')); p['pretrain']['seed']=$s
for k in p['finetune']: p['finetune'][k]['seed']=$s
p['evaluate']['temporal_views']=4
yaml.safe_dump(p,open('$w/params.yaml','w'),sort_keys=False)
PY
python -m pipelines.pretrain --shards shards --out $w/pre --checkpoints $w/ck --live $w/live --timing $w/t-pre.json --params $w/params.yaml --weights weights --no-flow > $w/pre.log 2>&1
for ds in ssv2 charades; do python -m pipelines.finetune $ds --pretrained $w/pre --shards shards/$ds --out $w/$ds --checkpoints $w/ck-$ds --live $w/live-$ds --timing $w/t-$ds.json --params $w/params.yaml --no-flow > $w/$ds.log 2>&1; done
for tv in 3 4; do sed -i "s/temporal_views: .*/temporal_views: $tv/" $w/params.yaml
for ds in kinetics ssv2 charades; do m=$w/pre; [ $ds != kinetics ] && m=$w/$ds
python -m pipelines.evaluate $ds --model $m --shards shards/$ds --metrics $w/m-$ds-$tv.json --plots $w/pl --params $w/params.yaml --no-flow > $w/ev.log 2>&1
echo "seed=$s tv=$tv $ds $(python3 -c "import json;d=json.load(open('$w/m-$ds-$tv.json'));print({k:round(v,4) for k,v in d.items() if k in ('top1','mAP','top1_shuffled','top1_static')})")"
done; done
