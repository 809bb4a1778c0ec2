"""How far pretraining moved each stage: mean |w - w_init| of the convolution weights, per stage.

    python3 bench/weight_delta.py INIT.safetensors TRAINED.safetensors [...]

INIT is the run's starting point (for seed 0: `kestrel pretrain ... --steps 1 --lr 1e-12` exports it, up to
BatchNorm statistics, which are not compared). Standard library only (float32 safetensors).
"""
import array
import json
import struct
import sys



def load(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); base=8+n; out={}
    for k,v in h.items():
        if k=='__metadata__': continue
        s,e=v['data_offsets']; a=array.array('f'); a.frombytes(b[base+s:base+e]); out[k]=a
    return out


init = load(sys.argv[1])
for p in sys.argv[2:]:
    w=load(p); row=[]
    for st in ['conv1.','layer1.','layer2.','layer3.','layer4.']:
        tot=cnt=0.0
        for k,a in w.items():
            if k.startswith(st) and k.endswith('weight') and 'bn' not in k and 'downsample.1' not in k:
                i=init[k]; tot+=sum(abs(x-y) for x,y in zip(a,i)); cnt+=len(a)
        row.append(f'{st[:-1]} {tot/cnt:.4f}')
    print(p, ' | '.join(row))
