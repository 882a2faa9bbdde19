"""Joint training of UniMed: supervised losses on labelled samples and a self-supervised loss
on unlabelled ones, in one stage and one optimiser step."""
