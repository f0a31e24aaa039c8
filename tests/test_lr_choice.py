"""THE learning-rate choice shared by the sweep runner and the analysis (utils/lr_choice.py)."""
from utils.lr_choice import choose_lr


def test_choice_is_the_best_seed_mean_ties_to_the_smaller_lr():
    # 1e-3 has the single best seed (0.01) but the worse mean; 1e-4 and 1e-2 tie on the mean
    by_lr = {1e-4: [0.03, 0.05], 1e-3: [0.01, 0.13], 1e-2: [0.05, 0.03], 1e-1: []}
    c = choose_lr(by_lr)
    assert c["lr"] == 1e-4 and c["mean"] == 0.04 and c["n_lrs"] == 3 and c["edge"] == "low"
    assert choose_lr(by_lr, maximize=True)["lr"] == 1e-3          # goal: maximize
    assert choose_lr({1e-4: [0.2], 1e-3: [0.1], 1e-2: [0.3]})["edge"] == ""
    assert choose_lr({1e-4: [0.2], 1e-3: [0.1]})["edge"] == "high"
    assert choose_lr({1e-3: [0.1], 1e-2: []})["edge"] == "single"
    assert choose_lr({1e-3: [], 1e-2: []}) is None
