"""The paper's analyses of trained models: ``analyze`` (Table 7, Figs. 4-12) and ``ablate`` (Table 6)."""
