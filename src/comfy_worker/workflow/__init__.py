"""ComfyUI workflows in the editor's UI format: conversion to the API prompt, the workflow
embedded in a saved image, and the models a workflow declares."""
