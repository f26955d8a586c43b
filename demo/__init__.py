"""The demo: a whole federation on loopback, a coordinator and every site on one machine. It sits
above the coordinator and the agent, which never import each other."""
