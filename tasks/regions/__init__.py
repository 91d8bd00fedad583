"""Regions' boundary polygons: the shipped ones (boundaries/) and the cell mask they give a grid."""
