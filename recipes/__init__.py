"""The recipes that ship with kerastune_lab (installed as `kerastune_lab.recipes`).

One file a workflow, each run by name after a plain pip install:

    kerastune recipes                 # the list, one line each
    kerastune run cats_vs_dogs --smoke
    kerastune cp lora_chat            # a copy to edit: ./lora_chat.py

In a checkout the same files run by path (`kerastune run
recipes/cats_vs_dogs.py`). `data/` holds the chat pairs the chat recipes
train on.
"""
