"""Audio path: provider audio -> 8 kHz G.711 frames -> the playout (bounded lead, played
positions) -> a transport that paces it outside speakd's interpreter (Asterisk's chan_websocket,
or speakd's RTP pacer process)."""
