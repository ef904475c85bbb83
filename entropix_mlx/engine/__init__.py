"""The generation engine: what every front (the Python API, the CLI, the server, the evaluation)
drives. Modules, lowest first:

  prompt        prompt ids (chat template or literal) and the one context-fit check
  seeds         the one default-seed rule and the one row-seed rule
  text          one row's text as its tokens come: detokenizer, stop strings, why it ended
  decode        one forward pass and sampler step; prefill; the single-row token loop
  batch         rows of different prompts decoded together (continuous batching)
  lookahead     rows that fork at uncertain tokens and keep the best rollout
  prompt_cache  KV states of earlier prompts, reused by token prefix

The engine never imports the API module (`entropix_mlx.generate`) or any front.
"""
