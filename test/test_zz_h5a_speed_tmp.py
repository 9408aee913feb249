import time, os, torch
def test_speed():
    import test_learning as tl
    from ditta_ros.synthetic import SyntheticVideo
    print("threads", torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), torch.get_num_interop_threads())
    print("anomaly", torch.is_anomaly_enabled(), "grad", torch.is_grad_enabled(), "det", torch.are_deterministic_algorithms_enabled())
    scene = SyntheticVideo(tl.H, tl.W, num_classes=tl.C, num_shapes=3, seed=0)
    t = time.time()
    m = tl._pretrained_iss(scene); print('iss', time.time()-t)
