"""The router service: the public API and the request pipeline of the mesh."""
