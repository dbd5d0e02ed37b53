# Summary of the PTB x-dnnl A/B rounds: per binary, each round's vs_onednn_{train,infer} (median of
# the round's paired ratios) and the layer ms; then the median over rounds.
import glob, json, statistics, sys
for d in sys.argv[1:]:
    print("==", d)
for which in ("old", "new"):
    rows = []
    for d in sys.argv[1:]:
        for f in sorted(glob.glob(f"{d}/{which}-*.json")):
            r = json.load(open(f))["results"][0]
            rows.append((f.split("/")[-2] + "/" + f.split("/")[-1], r["vs_onednn_train"], r["vs_onednn_infer"], r["rbn_layer_train_ms"], r["onednn_train_ms"], r["rbn_layer_infer_ms"], r["onednn_infer_ms"]))
    for x in rows:
        print(f"{which} {x[0]:22s} x dnnl train {x[1]:.3f} infer {x[2]:.3f}   layer train {x[3]:7.1f} dnnl {x[4]:7.1f}   layer infer {x[5]:6.1f} dnnl {x[6]:6.1f}")
    print(f"{which} median of {len(rows)} rounds: x dnnl train {statistics.median(x[1] for x in rows):.3f}, infer {statistics.median(x[2] for x in rows):.3f}\n")
